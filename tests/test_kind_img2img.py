"""img2img (A1111 1.10): resize modes' geometry, the spec keys and infotext, the kind's pixels
against a plain diffusers StableDiffusionImg2ImgPipeline call, batching, and `farm run` of
jobs/img2img.yaml as it is after `farm models make-tiny DIR`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import farm
from factories import make_task
from farm.expand import expand
from farm.img2img import resize_image
from farm.infotext import format_infotext, parse_infotext, read_parameters, task_parameters
from farm.spec import parse_spec
from worker.tiny import make_tiny_inputs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("i2i")
    make_tiny_inputs(folder)
    return folder / "inputs"


def _px(image) -> np.ndarray:
    return np.asarray(image).astype(int)


# ---- A1111's resize modes --------------------------------------------------------------------------

def test_resize_modes_follow_a1111s_geometry(inputs):
    wide = Image.open(inputs / "wide.png").convert("RGB")  # 96x64 into 64x64
    just = resize_image(wide, "Just resize", 64, 64)
    assert np.array_equal(_px(just), _px(wide.resize((64, 64), Image.Resampling.LANCZOS)))
    crop = resize_image(wide, "Crop and resize", 64, 64)  # cover (96x64), centred, sides cut
    assert np.array_equal(_px(crop), _px(wide.crop((16, 0, 80, 64))))
    fill = _px(resize_image(wide, "Resize and fill", 64, 64))  # fit 64x42 at y=11, bands 11 rows
    fitted = _px(wide.resize((64, 42), Image.Resampling.LANCZOS))
    assert np.array_equal(fill[11:53], fitted)
    assert (fill[0] == fill[10]).all() and (fill[53] == fill[63]).all()  # stretched edge rows
    assert np.abs(fill[0] - fitted[0]).max() <= 2 and np.abs(fill[63] - fitted[-1]).max() <= 2
    tall = resize_image(wide, "Resize and fill", 64, 128)
    assert tall.size == (64, 128)


# ---- spec and infotext -----------------------------------------------------------------------------

def test_spec_keys_tasks_and_infotext(inputs):
    text = ("prompt: a cat\ncheckpoint: seedfarm-tiny\nseed: 3\nsize: 64x64\ninit_images: inputs/gradient.png\n"
            "denoising_strength: [0.3, 0.6]\nresize_mode: resize and fill\n")
    spec = parse_spec(text, str(inputs.parent / "j.yaml"))
    tasks = list(expand(spec))
    assert [(t.kind, t.denoising_strength, t.resize_mode) for t in tasks] == [
        ("img2img", 0.3, "Resize and fill"), ("img2img", 0.6, "Resize and fill")]
    default = next(expand(parse_spec(text.split("denoising")[0], str(inputs.parent / "j.yaml"))))
    assert (default.denoising_strength, default.resize_mode) == (0.75, "Just resize")  # A1111's defaults
    params = task_parameters(tasks[1], 3)
    assert params["Denoising strength"] == 0.6 and not any(k.startswith("Hires") for k in params)
    # A1111 writes "Init image hash" only with its "save a copy of the init image" option (off by
    # default): seedfarm writes what A1111 writes by default
    assert "Init image hash" not in params
    _, _, parsed = parse_infotext(format_infotext("a cat", "", params))
    assert parsed["Denoising strength"] == 0.6


# ---- pixels ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipe(tiny_models):
    from worker.pipelines import load_pipeline

    return load_pipeline(tiny_models / "Stable-diffusion" / "seedfarm-tiny.safetensors")


def _slot(task, i, image):
    from worker.render import Slot

    return Slot(task, i, {"init_image": image})


def test_pixels_match_a_plain_diffusers_img2img_call(pipe, inputs):
    """Same start as A1111 (the VAE's latents of the resized image, seed noise at the latent size)
    and A1111's step rule: strength 0.5 of 10 steps runs int(0.5 * 10) + 1 = 6 steps, which is
    diffusers' strength 0.6 (it runs int(0.6 * 10) = 6)."""
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    from worker.kinds import img2img
    from worker.kinds.hires import encode_images
    from worker.samplers import make_scheduler

    image = Image.open(inputs / "gradient.png").convert("RGB")
    task = make_task(kind="img2img", init_image="0" * 64 + ".png", denoising_strength=0.5, resize_mode="Just resize",
                     steps=10, sampler="Euler", negative_prompt="", prompt="a red robot")
    ours = _px(img2img.render(pipe, [_slot(task, 0, image)])[0])
    plain = StableDiffusionImg2ImgPipeline(**{k: getattr(pipe, k) for k in (
        "vae", "text_encoder", "tokenizer", "unet", "scheduler", "safety_checker", "feature_extractor")},
        requires_safety_checker=False)
    plain.scheduler = make_scheduler(pipe.scheduler.config, "Euler", "Automatic", seeds=[task.seed])
    plain.set_progress_bar_config(disable=True)
    latents = encode_images(pipe, [image.resize((64, 64), Image.Resampling.LANCZOS)])
    out = plain(prompt="a red robot", image=latents, strength=0.6, num_inference_steps=10, guidance_scale=7.0,
                generator=torch.Generator("cpu").manual_seed(task.seed), output_type="np").images[0]
    theirs = (out * 255).round().astype(int)
    assert np.abs(ours - theirs).max() <= 1, np.abs(ours - theirs).max()  # measured: 0
    # and it is img2img: the strength changes the picture, the init image too
    weaker = _px(img2img.render(pipe, [_slot(task.model_copy(update={"denoising_strength": 0.2}), 0, image)])[0])
    other = _px(img2img.render(pipe, [_slot(task, 0, Image.open(inputs / "wide.png").convert("RGB"))])[0])
    assert np.abs(weaker - ours).max() > 1 and np.abs(other - ours).max() > 1


def test_an_image_in_a_batch_equals_it_rendered_alone(pipe, inputs):
    from worker.kinds import img2img

    a = Image.open(inputs / "gradient.png").convert("RGB")
    b = Image.open(inputs / "wide.png").convert("RGB")
    common = dict(kind="img2img", denoising_strength=0.7, resize_mode="Crop and resize", sampler="Euler a", steps=3)
    first = make_task(index=0, init_image="1" * 64 + ".png", **common)
    second = make_task(index=1, init_image="2" * 64 + ".png", batch_size=2, seed=20, **common)
    batch = img2img.render(pipe, [_slot(first, 0, a), _slot(second, 0, b), _slot(second, 1, b)])
    alone = img2img.render(pipe, [_slot(second, 1, b)])
    assert np.abs(_px(batch[2]) - _px(alone[0])).max() <= 1
    assert np.abs(_px(batch[1]) - _px(batch[2])).max() > 1  # seeds 20 and 21 differ


# ---- farm run of the example spec -------------------------------------------------------------------

def test_farm_run_of_jobs_img2img_after_make_tiny(tmp_path):
    models = tmp_path / "models"
    made = farm("models", "make-tiny", str(models))
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in (models / "inputs").iterdir()) == ["cutout.png", "gradient.png", "wide.png"]
    run = farm("run", str(ROOT / "jobs" / "img2img.yaml"), "--models", str(models), "--out", str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr
    (job,) = (tmp_path / "out").iterdir()
    images = sorted((job / "images").glob("*.png"))
    assert len(images) == 12 and len(list((job / "inputs").iterdir())) == 3
    for path in images:
        _, _, params = parse_infotext(read_parameters(path))
        assert params["Denoising strength"] in (0.4, 0.75) and params["Size"] == "64x64"
        assert Image.open(path).size == (64, 64)
    assert len(list((job / "sheets").glob("*.png"))) == 2
    # again: nothing to render, same job
    again = farm("run", str(ROOT / "jobs" / "img2img.yaml"), "--models", str(models), "--out", str(tmp_path / "out"))
    assert again.returncode == 0 and "12 already done" in again.stderr
    # as-spec: the infotext does not name the init image (A1111's neither): with it added, the
    # spec renders the same pixels (a square input: every resize mode is the same resize)
    records = [json.loads(p.read_text()) for p in (job / "records").glob("*.json")]
    assert {r["render_batch"] for r in records} == {3}  # the 3 init images of a strength share a call
    record = next(r for r in records if r["axes"]["init_images"] == "inputs/gradient.png")
    first = job / record["image"]
    info = farm("info", str(first), "--as-spec", "--models", str(models))
    assert info.returncode == 0, info.stderr
    assert "give its init image as init_images" in info.stdout
    respec = tmp_path / "again.yaml"
    respec.write_text(info.stdout + "init_images: inputs/gradient.png\n")
    assert farm("run", str(respec), "--models", str(models), "--out", str(tmp_path / "two")).returncode == 0
    (second,) = (tmp_path / "two").rglob("images/*.png")
    assert np.array_equal(_px(Image.open(first)), _px(Image.open(second)))
    assert read_parameters(second) == read_parameters(first)


def test_img2img_on_a_family_built_from_parts_is_refused():
    from farm.families import FAMILIES
    from farm.spec import SpecError
    from farm.spec.parse import SpecParser

    parser = SpecParser("prompt: a\ncheckpoint: x\nseed: 1\ninit_images: a.png\n", "job.yaml")
    f = parser.keys(parser.compose(), ["prompt", "checkpoint", "seed", "init_images"], "x")
    for row in (row for row in FAMILIES if row.parts):
        with pytest.raises(SpecError, match="^job.yaml:4:1: init_images: img2img is not supported on"):
            parser.img2img(f, [row])


def test_sdxl_renders_img2img_and_batches_as_alone(tmp_path, inputs):
    from worker.kinds import img2img
    from worker.pipelines import load_pipeline
    from worker.tiny import make_tiny_sdxl

    pipe = load_pipeline(make_tiny_sdxl(tmp_path))
    image = Image.open(inputs / "wide.png").convert("RGB")
    task = make_task(checkpoint="seedfarm-tiny-xl", kind="img2img", init_image="1" * 64 + ".png",
                     denoising_strength=0.6, resize_mode="Resize and fill", sampler="Euler a")
    other = task.model_copy(update={"seed": 9})
    batch = img2img.render(pipe, [_slot(task, 0, image), _slot(other, 0, image)])
    alone = img2img.render(pipe, [_slot(other, 0, image)])
    assert batch[0].size == (64, 64)
    assert np.abs(_px(batch[1]) - _px(alone[0])).max() <= 1 and np.abs(_px(batch[0]) - _px(batch[1])).max() > 1
