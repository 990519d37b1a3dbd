"""Flux.1 [dev] and [schnell] (worker/families/flux1.py): tiny models written in ComfyUI's layout
(worker/tiny_flux1.py) are recognised, find their parts, load through the worker's own path and
render what diffusers' FluxPipeline renders itself; emphasis weights T5 tokens. What every family
does alike (batches, CFG, other precisions, LoRAs ...) is in test_families_shared.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from farm.families import BY_NAME, NOT_A_CHECKPOINT, file_family, header_family
from farm.model_files import read_tensor_shapes
from farm.models import Registry
from farm.parts import resolve_parts
from family_models import FAMILIES, load

DEV, SCHNELL = "Flux.1 [dev]", "Flux.1 [schnell]"
PROMPT = "a red robot in a field"


@pytest.fixture(scope="module")
def models(family_models):
    root, dev = family_models("flux1")
    return root, dev, dev["schnell"]


def _files(paths, checkpoint=None):
    from worker.families import ModelFiles

    return ModelFiles(checkpoint or paths["denoiser"],
                      (("clip_l", paths["clip_l"]), ("t5xxl", paths["t5xxl"]), ("vae", paths["vae"])))


_task = FAMILIES["flux1"].make_task  # the family's task defaults (tests/family_models.py)


def _render(pipe, task, n=None):
    from worker.render import Slot, render_batch

    slots = [Slot(task, i) for i in range(n or task.batch_size)]
    return [np.asarray(image, dtype=np.float64) for image in render_batch(pipe, slots)]


def _reference(guidance: bool, task, **call):
    """The in-memory tiny pipeline's own diffusers call, on the worker's noise for the task's seed."""
    from worker.families import named
    from worker.render import Slot, initial_latents
    from worker.tiny_flux1 import tiny_pipeline

    pipe = tiny_pipeline(guidance)
    family = named(DEV if guidance else SCHNELL)
    pipe.seedfarm_family = family.name
    latents = family.pack_latents(pipe, initial_latents(pipe, [Slot(task)]))
    with torch.inference_mode():
        image = pipe(prompt=task.prompt, latents=latents, num_inference_steps=task.steps, height=task.height,
                     width=task.width, max_sequence_length=family.max_sequence_length, output_type="np",
                     **call).images[0]
    return (image * 255).round()


def test_every_file_is_recognised_as_its_variant(models):
    root, dev, schnell = models
    for key in ("denoiser", "fp8_e4m3fn", "Q8_0", "all_in_one"):
        assert header_family(read_tensor_shapes(dev[key])) == DEV, key
        assert file_family(dev[key], "checkpoint") == DEV, key
    assert file_family(schnell["denoiser"], "checkpoint") == SCHNELL
    for key in ("clip_l", "t5xxl", "vae"):  # parts are no checkpoints
        assert header_family(read_tensor_shapes(dev[key])) == NOT_A_CHECKPOINT, key


def test_parts_resolve_to_the_default_files(models):
    root, dev, _ = models
    registry = Registry(root)
    for family in (BY_NAME[DEV], BY_NAME[SCHNELL]):
        parts = resolve_parts(family, dev["denoiser"], registry)
        assert [(p.role, p.path) for p in parts] == [("clip_l", dev["clip_l"]), ("t5xxl", dev["t5xxl"]), ("vae", dev["vae"])]
    inside = {p.role: p.path for p in resolve_parts(BY_NAME[DEV], dev["all_in_one"], registry)}
    assert inside["clip_l"] is None and inside["t5xxl"] is None


def test_encode_matches_diffusers_and_emphasis_weights_t5_tokens(models):
    from worker.families import named

    _, dev, _ = models
    pipe = load(_files(dev))
    family = named(DEV)
    with torch.inference_mode():  # as the worker's Encoder and the pipeline's call run (grad mode differs by ~1e-5)
        plain = family.encode(pipe, PROMPT, 1)
        weighted = family.encode(pipe, "a (red:1.5) robot in a field", 1)
        embeds, pooled, _ = pipe.encode_prompt(PROMPT, max_sequence_length=512)
    assert plain.embeds.shape == (1, 512, 128)  # the tiny T5 is 128 wide (worker/tiny_parts.py)
    torch.testing.assert_close(plain.embeds, embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(plain.pooled, pooled, rtol=0, atol=1e-6)

    # the same tokens, "red" weighted 1.5: that token x1.5 relative to the rest, the mean restored
    ids, weights = family.t5_ids(pipe.tokenizer_2, "a (red:1.5) robot in a field")
    assert ids == family.t5_ids(pipe.tokenizer_2, PROMPT)[0]
    ratio = (weighted.embeds / plain.embeds)[0, :, 0]
    red = weights.index(1.5)
    others = torch.cat([ratio[:red], ratio[red + 1:]])
    torch.testing.assert_close(others, torch.full_like(others, others[0].item()), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ratio[red] / others[0], torch.tensor(1.5), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weighted.embeds.mean(), plain.embeds.mean(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(weighted.pooled, plain.pooled)  # the CLIP pooled vector: syntax removed, no weights
    assert named(SCHNELL).encode(pipe, PROMPT, 1).embeds.shape == (1, 256, 128)


def test_dev_render_equals_the_diffusers_pipeline(models):
    _, dev, _ = models
    task = _task(distilled_cfg=5.0)
    (image,) = _render(load(_files(dev)), task)
    assert image.std() > 5  # not a flat image: the comparison means something
    np.testing.assert_allclose(image, _reference(True, task, guidance_scale=5.0), atol=1)


def test_schnell_true_cfg_with_a_negative_prompt_equals_the_diffusers_pipeline(models):
    _, _, schnell = models
    task = _task(checkpoint="flux1-schnell-tiny", cfg=3.0, negative_prompt="blurry, dark")
    pipe = load(_files(schnell))
    (image,) = _render(pipe, task)
    np.testing.assert_allclose(image, _reference(False, task, true_cfg_scale=3.0, negative_prompt="blurry, dark"),
                               atol=1)
    (without,) = _render(pipe, _task(checkpoint="flux1-schnell-tiny", cfg=1.0, negative_prompt="blurry, dark"))
    assert np.abs(image - without).max() > 3  # cfg 1: no negative pass (measured: 6 of 255)


def test_truncated_or_wrong_variant_files_fail_in_one_line(models, tmp_path):
    import shutil

    from worker.families import ModelFiles
    from worker.pipelines import ModelLoadError

    _, dev, schnell = models
    broken = tmp_path / "diffusion_models" / "flux1-dev-tiny.safetensors"
    broken.parent.mkdir()
    broken.write_bytes(dev["denoiser"].read_bytes()[:-1000])
    shutil.copytree(dev["denoiser"].with_name("flux1-dev-tiny.config"), broken.with_name("flux1-dev-tiny.config"))
    with pytest.raises(ModelLoadError, match=r"^flux1-dev-tiny\.safetensors: ") as error:
        load(_files(dev, broken))
    assert "\n" not in str(error.value)
    # a [schnell] file beside a [dev] config folder
    other = tmp_path / "diffusion_models" / "flux1-other.safetensors"
    shutil.copy(schnell["denoiser"], other)
    shutil.copytree(dev["denoiser"].with_name("flux1-dev-tiny.config"), other.with_name("flux1-other.config"))
    with pytest.raises(ModelLoadError, match=r"^flux1-other\.safetensors: .*other variant"):
        load(ModelFiles(other, _files(dev).parts))


def test_make_tiny_cli_writes_a_family(tmp_path):
    from click.testing import CliRunner

    from farm.cli import main

    result = CliRunner().invoke(main, ["models", "make-tiny", str(tmp_path), "--family", "Flux.1 [schnell]"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "diffusion_models" / "flux1-schnell-tiny.safetensors"
    assert result.output.strip() == str(path)
    assert file_family(path, "checkpoint") == SCHNELL
    assert (tmp_path / "text_encoders" / "t5xxl_fp16.safetensors").is_file() and (tmp_path / "vae" / "ae.safetensors").is_file()
    result = CliRunner().invoke(main, ["models", "make-tiny", str(tmp_path), "--family", "Flux.2 [pro]"])
    assert result.exit_code != 0 and "no tiny model for 'Flux.2 [pro]'" in result.output
