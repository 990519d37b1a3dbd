"""The torch-free side of the families built from parts: recognising every family from a file's
header (safetensors and GGUF, denoiser alone or all-in-one), the GGUF header reader on hostile
input, finding a checkpoint's parts in a ComfyUI models folder, and what a spec does with them
(family defaults, flow samplers, located errors, infotext both ways).

The files here hold tiny stand-in tensors under the real tensor names (a header is all these
tests read); the family modules' own tests render real tiny models."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from farm.families import FAMILIES, NOT_A_CHECKPOINT, header_family
from farm.model_files import ModelFileError, read_gguf_header, read_tensor_shapes, weights_precision
from farm.models import Registry
from farm.parts import PartError, encoder_arch, resolve_parts
from farm.spec import SpecError, parse_spec
from farm.expand import expand
from farm.infotext import format_infotext, parse_infotext
from farm.params import infotext_parameters, spec_entries_from_infotext

PREFIX = "model.diffusion_model."
FLUX_DEV = {"double_blocks.0.img_attn.norm.key_norm.scale": (128,), "guidance_in.in_layer.weight": (64, 256),
            "img_in.weight": (64, 64)}
FLUX_SCHNELL = {"double_blocks.0.img_attn.norm.key_norm.scale": (128,), "img_in.weight": (64, 64)}
# what tells 4B from 9B from [dev]: the number of single blocks (20, 24, 48)
# (Flux.2 files also have Flux.1's marker tensor: they must not be taken for Flux.1)
KLEIN_4B = {"single_stream_modulation.lin.weight": (9216, 3072), "single_blocks.19.linear1.weight": (96, 32),
            "double_blocks.0.img_attn.norm.key_norm.scale": (128,)}
KLEIN_9B = {"single_stream_modulation.lin.weight": (12288, 4096), "single_blocks.23.linear1.weight": (96, 32),
            "double_blocks.0.img_attn.norm.key_norm.scale": (128,)}
SD35_LARGE = {"joint_blocks.0.context_block.adaLN_modulation.1.bias": (64,), "joint_blocks.37.x_block.mlp.fc1.weight": (4, 4)}
SD35_MEDIUM = {"joint_blocks.0.context_block.adaLN_modulation.1.bias": (64,), "joint_blocks.0.x_block.attn2.qkv.weight": (4, 4)}
ZIMAGE = {"layers.0.adaLN_modulation.0.weight": (64, 32), "cap_pad_token": (1, 32), "cap_embedder.0.weight": (32,)}
SDXL = {PREFIX + "input_blocks.0.0.weight": (4,), "conditioner.embedders.1.model.ln_final.weight": (4,)}
SD15 = {PREFIX + "input_blocks.0.0.weight": (4,), "cond_stage_model.transformer.text_model.final_layer_norm.weight": (4,)}
CLIP_L = {"text_model.encoder.layers.0.self_attn.q_proj.weight": (32, 32), "text_model.embeddings.token_embedding.weight": (49408, 32)}
CLIP_G = {"text_model.encoder.layers.0.self_attn.q_proj.weight": (64, 64), "text_model.embeddings.token_embedding.weight": (49408, 64)}
T5 = {"encoder.block.0.layer.0.SelfAttention.q.weight": (32, 32), "shared.weight": (32128, 32)}
QWEN3 = {"model.layers.0.self_attn.q_norm.weight": (8,), "model.embed_tokens.weight": (151936, 32)}
AE = {"decoder.conv_in.weight": (8, 16, 3, 3), "encoder.conv_in.weight": (8, 3, 3, 3)}


def write_safetensors(path: Path, tensors: dict[str, tuple], dtype: str = "BF16") -> Path:
    """A valid safetensors file whose tensors are all zeros (only the header matters here);
    1-D and 2-D tensors, as shapes. Big shapes are stored as 1 element per row to stay small:
    the header must still be right, so they are written with their real shapes but 1-byte dtype."""
    header, offset = {}, 0
    width = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1}[dtype]
    for name, shape in tensors.items():
        n = int(np.prod(shape)) * width
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)  # sparse zeros
    return path


def write_gguf(path: Path, tensors: dict[str, tuple], arch: str = "flux") -> Path:
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    for name, shape in tensors.items():
        data = np.zeros(shape, dtype=np.float32)
        if len(shape) == 2 and shape[-1] % 32 == 0:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ---- recognition ---------------------------------------------------------------------------------

CASES = {
    "Flux.1 [dev]": FLUX_DEV, "Flux.1 [schnell]": FLUX_SCHNELL, "Flux.2 [klein] 4B": KLEIN_4B,
    "Flux.2 [klein] 9B": KLEIN_9B, "SD3.5 Large": SD35_LARGE, "SD3.5 Medium": SD35_MEDIUM, "Z-Image Turbo": ZIMAGE,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_family_is_recognised_alone_all_in_one_and_as_gguf(tmp_path, name):
    tensors = CASES[name]
    alone = write_safetensors(tmp_path / "alone.safetensors", tensors)
    assert header_family(read_tensor_shapes(alone)) == name
    aio = write_safetensors(tmp_path / "aio.safetensors", {PREFIX + k: s for k, s in tensors.items()} | AE)
    assert header_family(read_tensor_shapes(aio)) == name
    if all(len(s) != 2 or s[-1] % 32 == 0 for s in tensors.values()):
        gguf_file = write_gguf(tmp_path / "q8.gguf", tensors)
        assert header_family(read_tensor_shapes(gguf_file)) == name


def test_recognition_never_confuses_families():
    """Every family's marker set matches exactly its own row, SD1.5/SDXL included; parts, LoRAs
    and VAEs are no checkpoints."""
    full = {name: {k: ("BF16", s) for k, s in t.items()} for name, t in CASES.items()}
    full["SDXL"] = {k: ("BF16", s) for k, s in SDXL.items()}
    full["SD1.5"] = {k: ("BF16", s) for k, s in SD15.items()}
    assert {name: header_family(t) for name, t in full.items()} == {name: name for name in full}
    for other in (CLIP_L, T5, QWEN3, AE, {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (4, 64)}):
        assert header_family({k: ("BF16", s) for k, s in other.items()}) == NOT_A_CHECKPOINT
    # Flux.2 [dev] (6144 wide) is recognised as itself, not rendered, and never taken for klein
    assert header_family({"single_stream_modulation.lin.weight": ("BF16", (36864, 6144))}) == "Flux.2"
    dev = {"single_stream_modulation.lin.weight": ("BF16", (36864, 6144)), "guidance_in.in_layer.weight": ("BF16", (6144, 256)),
           "double_blocks.0.img_attn.norm.key_norm.scale": ("BF16", (128,))}
    dev.update({f"single_blocks.{i}.linear1.weight": ("BF16", (96, 32)) for i in range(48)})
    assert header_family(dev) == "Flux.2"


def test_rendered_families_ship_their_config_folder_name():
    rendered = [f for f in FAMILIES if f.parts]
    assert {f.name for f in rendered} == set(CASES)
    assert all(f.config_folder and f.flow and f.default("sampler") == "Euler" for f in rendered)


# ---- GGUF header ---------------------------------------------------------------------------------

def test_gguf_header_gives_names_shapes_and_precision(tmp_path):
    path = write_gguf(tmp_path / "flux1-dev-Q8_0.gguf", {"img_in.weight": (64, 128), "img_in.bias": (64,)})
    tensors, metadata = read_gguf_header(path)
    assert tensors["img_in.weight"] == {"dtype": "Q8_0", "shape": [64, 128]}
    assert tensors["img_in.bias"]["shape"] == [64] and metadata["general.architecture"] == "flux"
    assert weights_precision(read_tensor_shapes(path)) == "Q8_0"


@pytest.mark.parametrize("blob", [
    b"", b"GGUF", b"GGUF" + struct.pack("<IQQ", 9, 0, 0),  # empty, truncated, unknown version
    b"GGUF" + struct.pack("<IQQ", 3, 10**12, 0),  # absurd tensor count
    b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 10**15),  # a key longer than the file
    b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 4, 10**12),
])
def test_hostile_gguf_headers_are_one_line_errors(tmp_path, blob):
    path = tmp_path / "bad.gguf"
    path.write_bytes(blob)
    with pytest.raises(ModelFileError) as e:
        read_gguf_header(path)
    assert "bad.gguf" in str(e.value) and "\n" not in str(e.value)


def test_precision_of_fp8_and_bf16_files(tmp_path):
    fp8 = write_safetensors(tmp_path / "fp8.safetensors", FLUX_DEV, dtype="F8_E4M3")
    assert weights_precision(read_tensor_shapes(fp8)) == "fp8_e4m3fn"
    assert weights_precision(read_tensor_shapes(write_safetensors(tmp_path / "b.safetensors", FLUX_DEV))) == "bf16"


# ---- parts in a ComfyUI models folder -----------------------------------------------------------

@pytest.fixture
def comfy(tmp_path) -> Path:
    models = tmp_path / "ComfyUI" / "models"
    write_safetensors(models / "diffusion_models" / "flux1-dev-fp8.safetensors", FLUX_DEV, dtype="F8_E4M3")
    write_gguf(models / "unet" / "flux1-schnell-Q8_0.gguf", {"img_in.weight": (64, 64), **{
        k: s for k, s in FLUX_SCHNELL.items() if k != "img_in.weight"}})
    write_safetensors(models / "diffusion_models" / "z_image_turbo_bf16.safetensors", ZIMAGE)
    write_safetensors(models / "checkpoints" / "flux1-dev-aio.safetensors",
                      {PREFIX + k: s for k, s in FLUX_DEV.items()} | {"vae." + k: s for k, s in AE.items()}
                      | {"text_encoders.clip_l.transformer." + k: s for k, s in CLIP_L.items()}
                      | {"text_encoders.t5xxl.transformer." + k: s for k, s in T5.items()})
    write_safetensors(models / "text_encoders" / "clip_l.safetensors", CLIP_L)
    write_safetensors(models / "text_encoders" / "t5xxl_fp16.safetensors", T5)
    write_safetensors(models / "text_encoders" / "t5xxl_fp8_e4m3fn.safetensors", T5, dtype="F8_E4M3")
    write_safetensors(models / "clip" / "qwen_3_4b.safetensors", QWEN3)
    write_safetensors(models / "vae" / "ae.safetensors", AE)
    return models


def test_parts_are_found_by_comfyui_names_and_checked_by_header(comfy):
    registry = Registry(comfy)
    flux = registry.resolve("checkpoint", "flux1-dev-fp8")
    from farm.families import BY_NAME

    parts = resolve_parts(BY_NAME["Flux.1 [dev]"], flux.path, registry)
    assert [(p.role, p.name) for p in parts] == [("clip_l", "clip_l"), ("t5xxl", "t5xxl_fp16"), ("vae", "ae")]
    # named in the spec: matched to a part by its header, whatever the order
    parts = resolve_parts(BY_NAME["Flux.1 [dev]"], flux.path, registry, ["t5xxl_fp8_e4m3fn", "clip_l"])
    assert [p.name for p in parts] == ["clip_l", "t5xxl_fp8_e4m3fn", "ae"]
    with pytest.raises(PartError, match="qwen3 encoder; Flux.1 \\[dev\\] renders with clip_l"):
        resolve_parts(BY_NAME["Flux.1 [dev]"], flux.path, registry, ["qwen_3_4b"])
    # an all-in-one file holds its own parts
    aio = registry.resolve("checkpoint", "flux1-dev-aio")
    assert [p.name for p in resolve_parts(BY_NAME["Flux.1 [dev]"], aio.path, registry)] == ["", "", ""]
    z = registry.resolve("checkpoint", "z_image_turbo_bf16")
    assert [p.name for p in resolve_parts(BY_NAME["Z-Image Turbo"], z.path, registry)] == ["qwen_3_4b", "ae"]
    assert encoder_arch(read_tensor_shapes(comfy / "clip" / "qwen_3_4b.safetensors")) == "qwen3"


def test_a_missing_part_is_a_located_spec_error_naming_what_was_looked_for(comfy, tmp_path):
    (comfy / "text_encoders" / "t5xxl_fp16.safetensors").unlink()
    (comfy / "text_encoders" / "t5xxl_fp8_e4m3fn.safetensors").unlink()
    text = "prompt: a cat\ncheckpoint: flux1-dev-fp8\nseed: 1\n"
    with pytest.raises(SpecError) as e:
        parse_spec(text, "job.yaml", comfy)
    message = str(e.value)
    assert message.startswith("job.yaml:2:13:") and "needs a t5xxl text encoder" in message
    assert "t5xxl*" in message and "text_encoders" in message


def test_flux_tasks_take_the_family_defaults_and_pin_their_parts(comfy):
    spec = parse_spec("prompt: a cat\ncheckpoint: [flux1-dev-fp8, flux1-schnell-Q8_0]\nseed: 1\n", "j.yaml", comfy)
    dev, schnell = list(expand(spec))
    assert (dev.sampler, dev.schedule, dev.cfg, dev.steps, dev.distilled_cfg) == ("Euler", "Simple", 1.0, 20, 3.5)
    assert (schnell.steps, schnell.distilled_cfg, schnell.shift) == (4, None, None)
    assert (dev.width, dev.height) == (1024, 1024)
    assert dev.text_encoders == {"clip_l": "clip_l", "t5xxl": "t5xxl_fp16"} and dev.vae == "ae"
    assert set(dev.part_hashes) == {"clip_l", "t5xxl"} and len(dev.vae_hash) == 64
    # re-expanded from the job record without the models folder: the same tasks
    again = parse_spec(spec.source_text, "j.yaml", None, spec.checkpoint_hashes())
    assert [t.id for t in expand(again)] == [dev.id, schnell.id]


def test_flux_refuses_sd_samplers_with_the_valid_ones(comfy):
    with pytest.raises(SpecError) as e:
        parse_spec("prompt: a\ncheckpoint: flux1-dev-fp8\nseed: 1\nsampler: DPM++ 2M Karras\n", "j.yaml", comfy)
    assert str(e.value).startswith("j.yaml:4:10:") and "valid: Euler with schedule types Simple, Beta, Karras" in str(e.value)
    spec = parse_spec("prompt: a\ncheckpoint: flux1-dev-fp8\nseed: 1\nschedule: [Simple, Beta]\nshift: [1.5, 3]\n"
                      "distilled_cfg: [2.5, 3.5]\n", "j.yaml", comfy)
    tasks = list(expand(spec))
    assert len(tasks) == 8 and {(t.schedule, t.shift, t.distilled_cfg) for t in tasks} == {
        (s, h, g) for s in ("Simple", "Beta") for h in (1.5, 3.0) for g in (2.5, 3.5)}


def test_forge_infotext_keys_both_ways(comfy):
    spec = parse_spec("prompt: a cat\ncheckpoint: flux1-dev-fp8\nseed: 7\nshift: 2\n", "j.yaml", comfy)
    (task,) = list(expand(spec))
    params = infotext_parameters(task, 7)
    assert params["Distilled CFG Scale"] == 3.5 and params["Shift"] == 2 and params["Schedule type"] == "Simple"
    assert [params[f"Module {i}"] for i in (1, 2, 3)] == ["ae", "clip_l", "t5xxl_fp16"]
    text = format_infotext(task.prompt, task.negative_prompt, params)
    prompt, _, parsed = parse_infotext(text)
    notes: list[str] = []
    entries = spec_entries_from_infotext({**parsed, "Prompt": prompt}, notes)
    assert entries["distilled_cfg"] == 3.5 and entries["shift"] == 2 and entries["vae"] == "ae"
    assert entries["text_encoders"] == ["clip_l", "t5xxl_fp16"]


def test_models_list_shows_family_and_precision_of_every_part(comfy):
    from conftest import farm

    result = farm("models", "list", "--models", str(comfy))
    assert result.returncode == 0, result.stderr
    lines = {line.split()[-1]: line for line in result.stdout.splitlines()}
    assert "Flux.1 [dev]" in lines["flux1-dev-fp8"] and "fp8_e4m3fn" in lines["flux1-dev-fp8"]
    assert "Flux.1 [schnell]" in lines["flux1-schnell-Q8_0"] and " Q8_0 " in lines["flux1-schnell-Q8_0"]
    assert lines["t5xxl_fp8_e4m3fn"].startswith("text_encoder") and "fp8_e4m3fn" in lines["t5xxl_fp8_e4m3fn"]
    assert lines["qwen_3_4b"].startswith("text_encoder") and lines["ae"].startswith("vae")


def test_loras_of_transformer_families_are_not_taken_for_sdxl(tmp_path):
    """An SD3.5 kohya LoRA has lora_te1_/lora_te2_ keys like SDXL's; it must not be refused on an
    SD3.5 checkpoint as "an SDXL LoRA". SD LoRAs keep their family."""
    from farm.families import file_family

    sd3 = write_safetensors(tmp_path / "sd3.safetensors", {"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": (4, 32),
                                                           "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 32)})
    flux = write_safetensors(tmp_path / "flux.safetensors", {"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": (4, 32)})
    xl = write_safetensors(tmp_path / "xl.safetensors", {
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_k.lora_down.weight": (4, 32),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 32)})
    assert (file_family(sd3, "lora"), file_family(flux, "lora"), file_family(xl, "lora")) == ("?", "?", "SDXL")
