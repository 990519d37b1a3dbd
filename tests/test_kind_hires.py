"""Hires fix (A1111 1.10): its spec keys and located errors, its infotext both ways, the kind through
the render loop with the tiny model, and `farm run` of a hires spec with an as-spec round trip."""

from __future__ import annotations

import io
import re
import json

import numpy as np
import pytest
from PIL import Image

from conftest import farm
from factories import make_task
from farm.expand import expand
from farm.hires import hires_size, img2img_steps
from farm.infotext import format_infotext, parse_infotext, read_parameters, task_parameters
from farm.params import spec_entries_from_infotext
from farm.recreate import spec_from_infotext
from farm.spec import SpecError, parse_spec
from farm.store import open_store

BASE = "prompt: a red robot\ncheckpoint: seedfarm-tiny\nseed: 7\nsize: 64x64\nsteps: 2\nsampler: Euler a\n"


def _spec(extra: str):
    return parse_spec(BASE + extra, "job.yaml")


def _error(extra: str) -> str:
    with pytest.raises(SpecError) as e:
        _spec(extra)
    return str(e.value)


# ---- A1111's sizes and steps ----------------------------------------------------------------------

def test_hires_sizes_and_steps_follow_a1111():
    assert hires_size(512, 768, 1.5) == ((768, 1152), (768, 1152))
    assert hires_size(512, 768, 2, 1024, 0) == ((1024, 1536), (1024, 1536))  # 0: keeps the aspect
    assert hires_size(512, 768, 2, 0, 1024) == ((682, 1024), (682, 1024))
    assert hires_size(512, 768, 2, 1024, 1024) == ((1024, 1536), (1024, 1024))  # cover, then crop
    assert hires_size(768, 512, 2, 1024, 1024) == ((1536, 1024), (1024, 1024))
    # steps 20, strength 0.7: int(0.7 * 20) + 1 = 15 steps from the end of a 20-step schedule;
    # Hires steps 10: 10 steps from the end of int(10 / 0.7) = 14
    assert img2img_steps(20, 0.7) == (20, 15) and img2img_steps(20, 0.7, 10) == (14, 10)
    assert img2img_steps(20, 1.0) == (20, 20)  # A1111 caps the strength at 0.999


# ---- the spec keys ---------------------------------------------------------------------------------

def test_hires_keys_make_hires_tasks_and_are_axes():
    spec = _spec("hr_scale: [1.5, 2]\nhr_upscaler: 'latent (bicubic), None'\ndenoising: 0.5\n"
                 "hr_sampler: DPM++ 2M Karras\nhr_steps: 0-1\nhr_cfg: 5\nhr_prompt: a blue robot\n")
    tasks = list(expand(spec))
    assert len(tasks) == 8 and {t.kind for t in tasks} == {"hires"}
    t = tasks[0]
    assert (t.hr_scale, t.hr_upscaler, t.denoising_strength, t.hr_steps) == (1.5, "Latent (bicubic)", 0.5, 0)
    assert (t.hr_sampler, t.hr_schedule, t.hr_cfg, t.hr_prompt) == ("DPM++ 2M", "Karras", 5.0, "a blue robot")
    assert {t.hr_upscaler for t in tasks} == {"Latent (bicubic)", "None"} and len({t.id for t in tasks}) == 8
    assert set(spec.swept_axes()) == {"hr_scale", "hr_upscaler", "hr_steps"}
    # defaults: A1111's Latent upscaler and denoising 0.7; hr_resize instead of hr_scale
    (t,) = expand(_spec("hr_resize: 128x0\n"))
    assert (t.hr_upscaler, t.denoising_strength, t.hr_resize_x, t.hr_resize_y) == ("Latent", 0.7, 128, 0)
    (t,) = expand(_spec("hr_resize: 0x128\n"))  # YAML's hexadecimal reading of 0x128 is not taken
    assert (t.hr_resize_x, t.hr_resize_y) == (0, 128)
    (plain,) = expand(_spec(""))
    assert plain.kind == "txt2img" and plain.denoising_strength is None and plain.hr_upscaler == ""


@pytest.mark.parametrize("extra, where, message", [
    ("hr_scale: 1.3\n", "job.yaml:7:11", "hr_scale 1.3 makes 64x64 into 83x83, not multiples of 8"),
    ("denoising_strength: 0.5\n", "job.yaml:7:1", "denoising_strength: is the strength of a hires fix"),
    ("hr_resize: 0x0\n", "job.yaml:7:12", "hr_resize: 0x0 has no size"),
    ("hr_scale: 2\nhr_resize: 128x0\n", "job.yaml:8:1", "give either hr_scale (a factor) or hr_resize"),
    ("hr_sampler: Eulr\n", "job.yaml:7:13", "hr_sampler: unknown sampler 'Eulr' (did you mean 'Euler'?)"),
    ("hr_schedule: Karras\nhr_sampler: DDIM\n", "job.yaml:7:14", "hr_schedule: sampler 'DDIM' has no schedule"),
    ("hr_scale: 2\ndenoising_strength: 0\n", "job.yaml:8:21", "denoising_strength: 0 is out of range"),
    ("hr_prompt: a <lora:x:1>\n", "job.yaml:7:12", "extra-network tags (<lora:...>) are not supported"),
    ("hr_steps: -1\n", "job.yaml:7:11", "hr_steps: -1 is out of range"),
])
def test_hires_errors_are_located(extra, where, message):
    text = _error(extra)
    assert text.startswith(where + ":") and message in text and "\n" not in text


def test_hires_on_a_family_built_from_parts_is_refused():
    from farm.families import FAMILIES
    from farm.spec.parse import SpecParser

    parser = SpecParser(BASE + "hr_scale: 2\n", "job.yaml")
    f = parser.keys(parser.compose(), ["prompt", "checkpoint", "seed", "size", "steps", "sampler", "hr_scale"], "x")
    for row in (row for row in FAMILIES if row.parts):
        with pytest.raises(SpecError, match="^" + re.escape(f"job.yaml:7:1: hr_scale: hires fix is not supported on {row.name} yet")):
            parser.hires(f, {"size": ["64x64"]}, [row])


# ---- infotext both ways ----------------------------------------------------------------------------

def test_hires_infotext_keys_as_a1111_writes_them():
    task = make_task(kind="hires", denoising_strength=0.45, hr_scale=2.0, hr_upscaler="Latent (antialiased)",
                     hr_steps=10, hr_sampler="DPM++ 2M", hr_schedule="Karras", hr_cfg=5.0,
                     hr_prompt="a blue robot, sharp")
    params = task_parameters(task, 7)
    keys = list(params)
    assert keys.index("Model") < keys.index("Denoising strength") < keys.index("RNG") < keys.index("Hires upscale")
    assert params["Denoising strength"] == 0.45 and params["Hires upscale"] == 2 and params["Hires steps"] == 10
    assert params["Hires upscaler"] == "Latent (antialiased)" and params["Hires sampler"] == "DPM++ 2M"
    assert params["Hires schedule type"] == "Karras" and params["Hires CFG Scale"] == 5
    text = format_infotext(task.prompt, task.negative_prompt, params)
    assert 'Hires prompt: "a blue robot, sharp"' in text and "Hires resize" not in text
    _, _, back = parse_infotext(text)
    entries = spec_entries_from_infotext({**back, "Prompt": task.prompt, "Negative prompt": ""}, [])
    assert {k: entries[k] for k in entries if k.startswith("hr_") or k == "denoising_strength"} == {
        "hr_upscaler": "Latent (antialiased)", "denoising_strength": 0.45, "hr_scale": 2, "hr_steps": 10,
        "hr_sampler": "DPM++ 2M Karras", "hr_cfg": 5, "hr_prompt": "a blue robot, sharp"}
    # A1111's own: Hires resize, the same sampler and prompt left out; an upscaler model is one line
    a1111 = ("a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: m, "
             "Denoising strength: 0.7, Hires resize: 1024x0, Hires upscaler: Latent, Version: v1.10.1")
    _, _, back = parse_infotext(a1111)
    entries = spec_entries_from_infotext({**back, "Prompt": "a cat", "Negative prompt": ""}, [])
    assert entries["hr_resize"] == "1024x0" and "hr_scale" not in entries and "hr_steps" not in entries
    # an upscaler model's name is kept (the spec parser checks it against the models folder)
    assert "hr_upscaler: R-ESRGAN 4x+\n" in spec_from_infotext(a1111.replace("Latent,", "R-ESRGAN 4x+,"), None)


# ---- the kind through the render loop -------------------------------------------------------------

def test_hires_renders_through_the_render_loop_and_a_batch_image_equals_it_alone(tiny_models, tmp_path):
    from worker.context import WorkerContext
    from worker.render_loop import render_tasks

    store = open_store(str(tmp_path / "out"))
    common = dict(job="hires", kind="hires", denoising_strength=0.6, hr_steps=2)
    tasks = [make_task(index=i, hr_upscaler=up, **common, **more) for i, (up, more) in enumerate([
        ("Latent", {"hr_scale": 2.0}),
        ("Latent (nearest-exact)", {"hr_resize_x": 96, "hr_resize_y": 0}),
        ("Lanczos", {"hr_resize_x": 128, "hr_resize_y": 96}),  # cover 128x128, crop to 128x96
        ("Nearest", {"hr_scale": 1.5, "hr_sampler": "DPM++ 2M", "hr_cfg": 4.0, "hr_prompt": "a blue robot"}),
        ("None", {"hr_scale": 1.5, "batch_size": 2, "sampler": "Euler a"}),
    ])]
    failures = {}
    ctx = WorkerContext(models_dir=tiny_models, max_batch=2)
    counts, left = render_tasks(tasks, store, ctx, lambda t, s, f: failures.setdefault(t.index, f))
    ctx.writer.flush()
    assert counts["images"] == 6 and left == [] and set(failures.values()) == {None}
    records = [json.loads(store.read_bytes(k)) for k in store.list_keys("hires/records/")]
    sizes = {}
    for record in records:
        with Image.open(io.BytesIO(store.read_bytes(f"hires/{record['image']}"))) as im:
            sizes[(record["task"]["index"], record["seed"])] = im.size
    assert sizes == {(0, 7): (128, 128), (1, 7): (96, 96), (2, 7): (128, 96), (3, 7): (96, 96),
                     (4, 7): (96, 96), (4, 8): (96, 96)}


def test_hires_images_depend_on_the_second_pass_and_batch_as_alone(tiny_models):
    from worker.kinds import hires
    from worker.pipelines import load_pipeline
    from worker.render import Slot, render_images

    pipe = load_pipeline(tiny_models / "Stable-diffusion" / "seedfarm-tiny.safetensors")
    task = make_task(kind="hires", hr_upscaler="Latent", denoising_strength=0.6, hr_scale=2.0, batch_size=2,
                     sampler="Euler a")
    batch = hires.render(pipe, [Slot(task, 0), Slot(task, 1)])
    alone = hires.render(pipe, [Slot(task, 1)])
    pixels = [np.asarray(im).astype(int) for im in (*batch, *alone)]
    assert np.abs(pixels[1] - pixels[2]).max() <= 1 and np.abs(pixels[0] - pixels[1]).max() > 1
    weaker = hires.render(pipe, [Slot(task.model_copy(update={"denoising_strength": 0.3}), 1)])
    assert np.abs(np.asarray(weaker[0]).astype(int) - pixels[2]).max() > 1
    # (0.3 of 2 steps runs 1, 0.6 runs 2: A1111 counts int(strength * steps) + 1)
    # txt2img of the same task fields renders as before: the kind, not the fields, decides
    plain = render_images(pipe, make_task(sampler="Euler a"))[0]
    assert plain.size == (64, 64)


# ---- farm run, and the infotext back to the same pixels ---------------------------------------------

def test_farm_run_of_a_hires_sweep_and_its_as_spec_round_trip(tiny_models, tmp_path):
    spec = tmp_path / "hires.yaml"
    spec.write_text(BASE + "hr_upscaler: [Latent (bicubic), Lanczos]\nhr_resize: 96x0\ndenoising_strength: 0.55\n"
                    "hr_steps: 2\nhr_sampler: DPM++ 2M Karras\nhr_prompt: a red robot, (chrome:1.2)\n")
    models = ["--models", str(tiny_models)]
    result = farm("run", str(spec), "--out", str(tmp_path / "one"), *models)
    assert result.returncode == 0, result.stderr
    images = sorted((tmp_path / "one").rglob("images/*.png"))
    assert len(images) == 2
    for path in images:
        _, _, params = parse_infotext(read_parameters(path))
        assert params["Size"] == "64x64" and params["Hires resize"] == "96x0" and params["Hires steps"] == 2
        assert params["Denoising strength"] == 0.55 and params["Hires sampler"] == "DPM++ 2M"
        assert Image.open(path).size == (96, 96)
    first = next(p for p in images if "Lanczos" in read_parameters(p))
    info = farm("info", str(first), "--as-spec", *models)
    assert info.returncode == 0, info.stderr
    again = tmp_path / "again.yaml"
    again.write_text(info.stdout)
    assert farm("run", str(again), "--out", str(tmp_path / "two"), *models).returncode == 0
    (second,) = (tmp_path / "two").rglob("images/*.png")
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))
    assert read_parameters(second) == read_parameters(first)
