"""Flux.2 [klein] 4B / 9B (worker/families/flux2.py, worker/tiny_flux2.py): the tiny models written in
ComfyUI's layout (denoiser in BFL's keys as safetensors, fp8 and GGUF Q8_0; qwen_3_4b / qwen_3_8b;
flux2-vae; all-in-one files), recognised and resolved by the farm, loaded through load_pipeline
and rendered through render_batch like diffusers' own Flux2KleinPipeline call; conversions both
ways, conditioning, the 9B variant. What every family does alike (batches, CFG, other
precisions, emphasis, LoRAs ...) is in test_families_shared.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from farm.families import NOT_A_CHECKPOINT, header_family
from farm.model_files import read_tensor_shapes, weights_precision
from farm.models import Registry
from farm.parts import resolve_parts
from family_models import FAMILIES, load
from worker import tiny_flux2, tiny_parts
from worker.families import flux2, named, of_pipeline
from worker.families.base import ModelFiles
from worker.pipelines import load_pipeline
from worker.render import Slot, render_batch
from worker.rng import image_noise
from worker.safe_load import ModelLoadError

FAMILY = "Flux.2 [klein] 4B"


@pytest.fixture(scope="module")
def tiny(family_models):
    return family_models("flux2")


@pytest.fixture(scope="module")
def tiny_9b(tiny):
    models, _ = tiny
    return models, tiny_flux2.write_tiny(models, "9b", precisions=("fp32",))


def _files(paths, which="denoiser", role="qwen3_4b"):
    if which == "all_in_one":
        return ModelFiles(paths[which], ((role, None), ("vae", None)))
    return ModelFiles(paths[which], ((role, paths[role]), ("vae", paths["vae"])))


@pytest.fixture(scope="module")
def pipe(tiny):
    return load(_files(tiny[1]))


@pytest.fixture(scope="module")
def reference():
    return tiny_flux2.tiny_pipeline("4b")


_task = FAMILIES["flux2"].make_task  # the family's task defaults (tests/family_models.py)


def _render(pipe, *slots) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.float32) / 255 for image in render_batch(pipe, list(slots))])


def _noise(task, i=0) -> torch.Tensor:
    return image_noise((128, task.height // 16, task.width // 16), task.seed + i, task.rng, None, 0.0, (0, 0))


# ---- files and conversions ----------------------------------------------------------------------

def test_every_written_file_is_recognised_and_its_parts_resolve(tiny, tiny_9b):
    models, paths = tiny
    for which in ("denoiser", "bf16", "fp8_e4m3fn", "Q8_0", "all_in_one"):
        assert header_family(read_tensor_shapes(paths[which])) == FAMILY, which
    assert header_family(read_tensor_shapes(tiny_9b[1]["denoiser"])) == "Flux.2 [klein] 9B"
    assert header_family(read_tensor_shapes(tiny_9b[1]["all_in_one"])) == "Flux.2 [klein] 9B"
    assert weights_precision(read_tensor_shapes(paths["fp8_e4m3fn"])) == "fp8_e4m3fn"
    assert weights_precision(read_tensor_shapes(paths["Q8_0"])) == "Q8_0"
    for which in ("qwen3_4b", "vae", "kohya_lora", "diffusers_lora"):
        assert header_family(read_tensor_shapes(paths[which])) == NOT_A_CHECKPOINT, which
    assert header_family(read_tensor_shapes(tiny_9b[1]["qwen3_8b"])) == NOT_A_CHECKPOINT
    registry = Registry(models)
    parts = resolve_parts(named(FAMILY).facts, paths["denoiser"], registry)
    assert [(p.role, p.name, p.path) for p in parts] == [
        ("qwen3_4b", "qwen_3_4b", paths["qwen3_4b"]), ("vae", "flux2-vae", paths["vae"])]
    parts = resolve_parts(named("Flux.2 [klein] 9B").facts, tiny_9b[1]["denoiser"], registry)
    assert [(p.role, p.name) for p in parts] == [("qwen3_8b", "qwen_3_8b"), ("vae", "flux2-vae")]
    inside = resolve_parts(named(FAMILY).facts, paths["all_in_one"], registry)
    assert [(p.role, p.path) for p in inside] == [("qwen3_4b", None), ("vae", None)]


def test_the_block_counts_tell_the_variants_apart(tiny):
    tensors = read_tensor_shapes(tiny[1]["denoiser"])
    # Flux.2 [dev]: 48 single blocks
    dev = dict(tensors)
    dev.update({f"single_blocks.{i}.linear1.weight": tensors["single_blocks.0.linear1.weight"] for i in range(20, 48)})
    assert header_family(dev) == "Flux.2"
    assert header_family({k: v for k, v in tensors.items() if not k.startswith("single_blocks.19.")}) == "Flux.2"


def test_transformer_layout_round_trips_through_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    for variant in ("4b", "9b"):
        state = tiny_flux2.tiny_transformer(variant).state_dict()
        original = flux2.transformer_to_original(state)
        assert "final_layer.adaLN_modulation.1.weight" in original and "double_blocks.0.img_attn.qkv.weight" in original
        back = convert_flux2_transformer_checkpoint_to_diffusers(dict(original))
        assert back.keys() == state.keys()
        assert all(torch.equal(back[k], state[k]) for k in state)


def test_vae_layout_round_trips_and_keeps_the_batch_norm():
    vae = tiny_parts.vae("flux2")
    state = vae.state_dict()
    original = flux2.vae_to_original(state, vae.config)
    assert {"encoder.quant_conv.weight", "decoder.post_quant_conv.weight", "bn.running_mean", "bn.running_var",
            "encoder.down.0.block.0.conv1.weight", "decoder.up.3.upsample.conv.weight"} <= original.keys()
    back = flux2.vae_to_diffusers(original, vae.config)
    assert back.keys() == state.keys() - {"bn.num_batches_tracked"}
    assert all(torch.equal(back[k], state[k]) for k in back)


def test_missing_tensors_are_refused_naming_the_file(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    paths = tiny[1]
    state = load_file(str(paths["denoiser"]))
    del state["double_blocks.1.txt_mlp.2.weight"]
    broken = tmp_path / "klein-cut.safetensors"
    save_file(state, str(broken))
    (tmp_path / "klein-cut.config").symlink_to(paths["denoiser"].with_name(paths["denoiser"].stem + ".config"))
    with pytest.raises(ModelLoadError) as e:
        load_pipeline(ModelFiles(broken, (("qwen3_4b", paths["qwen3_4b"]), ("vae", paths["vae"]))), "cpu",
                      torch.float32)
    assert "klein-cut.safetensors" in str(e.value) and "txt_mlp" in str(e.value) and "\n" not in str(e.value)


def test_a_broken_part_is_one_line_naming_it(tiny, tmp_path):
    paths = tiny[1]
    broken = tmp_path / "flux2-vae.safetensors"
    broken.write_bytes(paths["vae"].read_bytes()[:50_000])
    with pytest.raises(ModelLoadError) as e:
        load_pipeline(ModelFiles(paths["denoiser"], (("qwen3_4b", paths["qwen3_4b"]), ("vae", broken))), "cpu",
                      torch.float32)
    assert "flux2-vae.safetensors" in str(e.value) and "\n" not in str(e.value)


def test_the_loaded_pipeline_has_the_written_weights(pipe, reference):
    for name in ("transformer", "vae", "text_encoder"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    assert pipe.seedfarm_text_layers == (1, 2, 3) and pipe.seedfarm_distilled is True


# ---- conditioning -------------------------------------------------------------------------------

def test_encode_is_the_pipelines_own_stacked_layers(pipe, reference):
    cond = of_pipeline(pipe).encode(pipe, "a red robot", 1)
    assert cond.pooled is None and cond.embeds.shape == (1, 512, 96)
    own, _ = reference.encode_prompt("a red robot", text_encoder_out_layers=(1, 2, 3))
    torch.testing.assert_close(cond.embeds, own, rtol=0, atol=0)
    # by hand: the chat template without thinking, padded to 512, layers 1, 2, 3 side by side
    text = pipe.tokenizer.apply_chat_template([{"role": "user", "content": "a red robot"}], tokenize=False,
                                              add_generation_prompt=True, enable_thinking=False)
    inputs = pipe.tokenizer(text, return_tensors="pt", padding="max_length", max_length=512)
    with torch.no_grad():
        hidden = pipe.text_encoder(**inputs, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(cond.embeds.numpy(), torch.cat([hidden[i] for i in (1, 2, 3)], -1).numpy(), atol=1e-5)


# ---- rendering ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_render_equals_the_pipelines_own_call(pipe, reference, cfg):
    task = _task(cfg=cfg)
    ours = _render(pipe, Slot(task))
    kwargs = {"negative_prompt_embeds": reference.encode_prompt("blurry", text_encoder_out_layers=(1, 2, 3))[0]} \
        if cfg > 1 else {}
    with torch.no_grad():
        own = reference(prompt="a red robot", guidance_scale=cfg, num_inference_steps=2, height=64, width=64,
                        latents=_noise(task)[None], text_encoder_out_layers=(1, 2, 3), output_type="np",
                        **kwargs).images
    np.testing.assert_allclose(ours, np.round(own * 255) / 255, atol=1.5 / 255)
    assert ours.std() > 0.02  # an image, not a flat field


def test_9b_loads_and_renders_like_its_own_pipeline(tiny_9b):
    _, paths = tiny_9b
    pipe9 = load_pipeline(_files(paths, role="qwen3_8b"), "cpu", torch.float32)
    assert of_pipeline(pipe9).name == "Flux.2 [klein] 9B" and pipe9.transformer.config.num_single_layers == 24
    task = _task(checkpoint="flux2-klein-9b-tiny")
    ours = _render(pipe9, Slot(task))
    reference = tiny_flux2.tiny_pipeline("9b")
    with torch.no_grad():
        own = reference(prompt="a red robot", guidance_scale=1.0, num_inference_steps=2, height=64, width=64,
                        latents=_noise(task)[None], text_encoder_out_layers=(1, 2, 3), output_type="np").images
    np.testing.assert_allclose(ours, np.round(own * 255) / 255, atol=1.5 / 255)
    aio = load_pipeline(_files(paths, "all_in_one", role="qwen3_8b"), "cpu", torch.float32)
    np.testing.assert_allclose(_render(aio, Slot(task)), ours, atol=1.5 / 255)


def test_a_4b_encoder_with_a_9b_denoiser_is_refused(tiny, tiny_9b):
    paths, paths9 = tiny[1], tiny_9b[1]
    with pytest.raises(ModelLoadError) as e:
        load_pipeline(ModelFiles(paths9["denoiser"], (("qwen3_8b", paths["qwen3_4b"]), ("vae", paths["vae"]))),
                      "cpu", torch.float32)
    assert "qwen_3_4b.safetensors" in str(e.value) and "\n" not in str(e.value)
