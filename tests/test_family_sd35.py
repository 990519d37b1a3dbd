"""SD3.5 Large and Medium (worker/families/sd35.py): the tiny models written in ComfyUI's layout are
recognised, resolve their parts, load through the worker and render as diffusers' own pipeline
does; emphasis on CLIP and T5, clip skip, LoRA name layouts, Stability's and scaled-fp8 files. What
every family does alike (batches, CFG, other precisions, LoRAs ...) is in test_families_shared.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from family_models import FAMILIES, load
from farm.families import BY_NAME, NOT_A_CHECKPOINT, header_family
from farm.model_files import read_tensor_shapes

VARIANTS = {"medium": "SD3.5 Medium", "large": "SD3.5 Large"}


@pytest.fixture(scope="module")
def models(family_models) -> tuple[Path, dict]:
    """One ComfyUI models folder with both tiny variants (they share encoders and VAE)."""
    root, medium = family_models("sd35")
    return root, {"medium": medium, "large": medium["large"]}


def _files(paths: dict):
    return FAMILIES["sd35"].files(paths)


def _load(paths: dict):
    return load(_files(paths))


_task = FAMILIES["sd35"].make_task  # the family's task defaults (tests/family_models.py)


def _render(pipe, *tasks_and_images):
    from worker.render import Slot, render_batch

    slots = [Slot(t, i) for t, i in tasks_and_images]
    return [np.asarray(img, dtype=np.float32) for img in render_batch(pipe, slots)]


# ---- files and recognition -------------------------------------------------------------------

def test_every_written_file_is_recognised(models):
    _, paths = models
    for variant, name in VARIANTS.items():
        for key in ("diffusion_model", "fp8", "gguf", "checkpoint"):
            assert header_family(read_tensor_shapes(paths[variant][key])) == name, (variant, key)
        for key in ("clip_l", "clip_g", "t5xxl", "vae"):
            assert header_family(read_tensor_shapes(paths[variant][key])) == NOT_A_CHECKPOINT
    fp8 = read_tensor_shapes(paths["medium"]["fp8"])
    assert fp8["joint_blocks.0.x_block.attn.qkv.weight"][0] == "F8_E4M3"


def _real_key_names(num_layers: int, dual: tuple) -> dict:
    """The MMDiT tensor names of a real config, with the real widths of the recognition tensors."""
    from worker.families.sd35 import original_modules

    names = {"pos_embed": (None, (1, 1, 1))}
    for module in original_modules(num_layers, dual):
        names[f"{module}.weight"] = (None, ())
        if "ln_" not in module:
            names[f"{module}.bias"] = (None, ())
    return names


def test_the_real_architectures_are_told_apart():
    """Large (38 blocks, no second attention) and Medium (24 blocks, MMDiT-X attn2 in 0..12) as
    their real configs give them; also under the all-in-one prefix."""
    real = {"SD3.5 Large": (38, ()), "SD3.5 Medium": (24, tuple(range(13)))}
    configs = Path("/work/wt-configs/configs")
    for variant, name in (("sd35-large", "SD3.5 Large"), ("sd35-medium", "SD3.5 Medium")):
        config_file = configs / variant / "transformer" / "config.json"
        if config_file.is_file():  # the real configs, where the configs branch is at hand
            config = json.loads(config_file.read_text())
            assert (config["num_layers"], tuple(config["dual_attention_layers"])) == real[name]
    for name, (layers, dual) in real.items():
        names = _real_key_names(layers, dual)
        assert header_family(names) == name
        assert header_family({"model.diffusion_model." + k: v for k, v in names.items()}) == name
    assert header_family(_real_key_names(24, ())) == "SD3"  # SD3 Medium: not rendered, not mistaken


def test_parts_resolve_to_the_default_files(models):
    from farm.models import Registry
    from farm.parts import resolve_parts

    root, paths = models
    registry = Registry(root)
    for variant, name in VARIANTS.items():
        parts = resolve_parts(BY_NAME[name], paths[variant]["diffusion_model"], registry)
        assert [(p.role, p.name) for p in parts] == [
            ("clip_l", "clip_l"), ("clip_g", "clip_g"), ("t5xxl", "t5xxl_fp16"), ("vae", "sd35_vae")]
        inside = resolve_parts(BY_NAME[name], paths[variant]["checkpoint"], registry)
        assert [(p.role, p.path) for p in inside] == [
            ("clip_l", None), ("clip_g", None), ("t5xxl", None), ("vae", None)]


def test_the_written_denoiser_loads_back_to_the_same_weights(models):
    from diffusers import SD3Transformer2DModel

    from worker.families.sd35 import tiny_pipeline

    _, paths = models
    path = paths["medium"]["diffusion_model"]
    loaded = SD3Transformer2DModel.from_single_file(str(path), config=str(path.with_name(path.stem + ".config")),
                                                    subfolder="transformer", local_files_only=True)
    expected = tiny_pipeline("medium").transformer.state_dict()
    state = loaded.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


# ---- rendering -----------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_render_equals_the_diffusers_pipeline(models, variant):
    from worker.families.sd35 import tiny_pipeline
    from worker.render import Slot, initial_latents
    from worker.samplers import flow_scheduler

    _, paths = models
    pipe = _load(paths[variant])
    assert pipe.seedfarm_family == VARIANTS[variant]
    task = _task()
    (image,) = _render(pipe, (task, 0))
    reference = tiny_pipeline(variant)
    reference.scheduler = flow_scheduler(dict(reference.scheduler.config), "Simple")
    with torch.inference_mode():
        expected = reference(prompt=task.prompt, negative_prompt=task.negative_prompt, guidance_scale=task.cfg,
                             num_inference_steps=task.steps, width=task.width, height=task.height,
                             latents=initial_latents(pipe, [Slot(task)]), output_type="np").images[0]
    np.testing.assert_allclose(image, expected * 255, atol=1.0)  # uint8 rounding only


def test_encode_matches_encode_prompt_and_clip_skip(models):
    _, paths = models
    pipe = _load(paths["medium"])
    family = pipe_family(pipe)
    text = "a red robot, standing in the rain"
    with torch.inference_mode():
        for clip_skip in (1, 2):
            ours = family.encode(pipe, text, clip_skip)
            embeds, _, pooled, _ = pipe.encode_prompt(text, text, text, do_classifier_free_guidance=False,
                                                      clip_skip=None if clip_skip == 1 else clip_skip - 1)
            assert ours.embeds.shape == embeds.shape == (1, 77 + 256, 128)
            torch.testing.assert_close(ours.embeds, embeds, atol=1e-6, rtol=0)
            torch.testing.assert_close(ours.pooled, pooled, atol=1e-6, rtol=0)
        assert not torch.equal(family.encode(pipe, text, 1).embeds, family.encode(pipe, text, 2).embeds)


def pipe_family(pipe):
    from worker.families import of_pipeline

    return of_pipeline(pipe)


def test_emphasis_on_clip_and_t5_keeps_each_mean(models):
    _, paths = models
    pipe = _load(paths["medium"])
    family = pipe_family(pipe)
    with torch.inference_mode():
        plain = family.encode(pipe, "a red robot", 1).embeds
        weighted = family.encode(pipe, "a (red:1.5) robot", 1).embeds
    sections = {"clip_l": (slice(0, 77), slice(0, 32)), "clip_g": (slice(0, 77), slice(32, 96)),
                "t5": (slice(77, None), slice(None))}
    for name, (tokens, dims) in sections.items():
        a, b = plain[0, tokens, dims], weighted[0, tokens, dims]
        assert not torch.allclose(a, b), name
        torch.testing.assert_close(a.mean(), b.mean(), atol=1e-5, rtol=1e-4)
    assert torch.equal(weighted[0, :77, 96:], torch.zeros(77, 32))  # CLIP padded to T5's width


def test_kohya_and_comfyui_names_convert_to_the_same_lora(models):
    from safetensors.torch import load_file

    from worker.families.sd35 import lora_to_diffusers, tiny_configs

    root, _ = models
    config = tiny_configs("medium")["transformer"]
    kohya = lora_to_diffusers(load_file(str(root / "loras" / "sd35_kohya.safetensors")), config)
    comfy = lora_to_diffusers(load_file(str(root / "loras" / "sd35_comfyui.safetensors")), config)
    assert kohya.keys() == comfy.keys()
    assert "transformer.transformer_blocks.0.attn2.to_v.lora_B.weight" in kohya
    assert all(torch.equal(kohya[k], comfy[k]) for k in kohya)


# ---- errors ------------------------------------------------------------------------------------

def test_a_truncated_denoiser_is_one_line(models, tmp_path):
    from worker.pipelines import load_pipeline
    from worker.safe_load import ModelLoadError

    _, paths = models
    source = paths["medium"]["diffusion_model"]
    broken = tmp_path / source.name
    broken.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(ModelLoadError) as e:
        load_pipeline(_files({**paths["medium"], "diffusion_model": broken}), "cpu", torch.float32)
    assert source.name in str(e.value) and "\n" not in str(e.value)


def test_stability_layout_vae_inside_encoders_beside(models, tmp_path):
    """Stability's sd3.5_*.safetensors hold the MMDiT and the VAE only (the encoders are separate
    files): the VAE comes from the checkpoint, the encoders from text_encoders/ by their names."""
    from safetensors.torch import load_file, save_file

    from farm.models import Registry
    from farm.parts import resolve_parts
    from worker.families.base import ModelFiles
    from worker.pipelines import load_pipeline

    root, paths = models
    aio = paths["medium"]["checkpoint"]
    state = {k: v for k, v in load_file(str(aio)).items() if not k.startswith("text_encoders.")}
    target = root / "checkpoints" / "sd3.5_tiny_medium.safetensors"
    save_file(state, str(target))
    (target.with_name(target.stem + ".config")).symlink_to(aio.with_name(aio.stem + ".config"))
    parts = resolve_parts(BY_NAME["SD3.5 Medium"], target, Registry(root))
    assert [(p.role, p.name) for p in parts] == [
        ("clip_l", "clip_l"), ("clip_g", "clip_g"), ("t5xxl", "t5xxl_fp16"), ("vae", "")]
    pipe = load_pipeline(ModelFiles(target, tuple((p.role, p.path) for p in parts)), "cpu", torch.float32)
    task = _task(seed=11)
    np.testing.assert_allclose(_render(pipe, (task, 0))[0], _render(_load(paths["medium"]), (task, 0))[0], atol=1.0)
    target.unlink()


def test_a_scaled_fp8_t5_file_is_upcast(models, tmp_path):
    """ComfyUI's t5xxl_fp8_e4m3fn_scaled: fp8 weights times a per-weight scale_weight."""
    from safetensors.torch import load_file, save_file

    from worker.families.sd35 import _read, _text_encoder

    _, paths = models
    source = paths["medium"]["t5xxl"]
    state = load_file(str(source))
    scaled = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    for key, value in state.items():
        if value.dim() == 2 and key != "shared.weight":
            scale = value.abs().max() / 448
            scaled[key] = (value / scale).to(torch.float8_e4m3fn)
            scaled[key.removesuffix(".weight") + ".scale_weight"] = scale.reshape(1)
        else:
            scaled[key] = value
    target = tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors"
    save_file(scaled, str(target))
    (tmp_path / "t5xxl_fp8_e4m3fn_scaled.config.json").write_text(source.with_name("t5xxl_fp16.config.json").read_text())
    config_dir = Path("/nonexistent")  # the config beside the file is used
    full = _text_encoder("t5xxl", _read(source, "t5"), source.name, source, config_dir, torch.float32)
    fp8 = _text_encoder("t5xxl", _read(target, "t5"), target.name, target, config_dir, torch.float32)
    ids = torch.tensor([[9, 1712, 1, 0, 0]])
    with torch.inference_mode():
        a, b = full(ids)[0], fp8(ids)[0]
    assert fp8.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float32
    assert (a - b).abs().max() < 0.1 * a.abs().max()
