"""The upscale kind (A1111's Extras tab): its spec keys and located errors, A1111's geometry and
postprocessing text, the kind through the render loop without a checkpoint, and `farm run` of
jobs/upscale.yaml and of an upscale over a finished job's images (which keep their infotext)."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, farm
from farm.expand import expand
from farm.hashes import sha256_file
from farm.infotext import png_bytes, read_parameters
from farm.jobs import write_job_record
from farm.spec import SpecError, parse_spec
from farm.store import open_store
from farm.upscale import output_size, postprocess_text


def _spec(text: str, models, **kw):
    return parse_spec(text, str(models / "job.yaml"), models, **kw)


def _error(text: str, models) -> str:
    with pytest.raises(SpecError) as e:
        _spec(text, models)
    assert "\n" not in str(e.value)
    return str(e.value)


# ---- A1111's geometry and text ---------------------------------------------------------------------

def test_output_sizes_and_postprocessing_text_follow_a1111():
    assert output_size(64, 48, "Lanczos", 2.5) == (160, 120)
    assert output_size(100, 60, "x", 1.5) == (144, 88)  # A1111 rounds down to multiples of 8
    assert output_size(64, 48, "x", 2, 300, 100) == (300, 100)  # "Scale to" with "Crop to fit"
    assert output_size(64, 48, "None", 4) == (64, 48)  # None: Extras skips the upscale
    assert postprocess_text("4x-UltraSharp", 2.0) == "Postprocess upscale by: 2, Postprocess upscaler: 4x-UltraSharp"
    assert postprocess_text("Lanczos", 2.5) == "Postprocess upscale by: 2.5, Postprocess upscaler: Lanczos"
    assert postprocess_text("a, b", 2, 256, 128) == ("Postprocess upscale to: 256x128, Postprocess crop to: 256x128, "
                                                    'Postprocess upscaler: "a, b"')
    assert postprocess_text("None", 2) == ""


# ---- the spec ----------------------------------------------------------------------------------------

def test_upscale_keys_make_upscale_tasks_over_the_init_images(tiny_models):
    spec = _spec("init_images: inputs\nupscaler: [tiny-esrgan-2x, Nearest]\nupscale_by: [2, 1.5]\n", tiny_models)
    tasks = list(expand(spec))
    assert len(tasks) == 12 and {t.kind for t in tasks} == {"upscale"}
    assert set(spec.swept_axes()) == {"init_images", "upscaler", "upscale_by"}
    by_axes = {(t.axes["init_images"], t.upscaler, t.upscale_by): t for t in tasks}
    wide = by_axes[("inputs/wide.png", "tiny-esrgan-2x", 1.5)]
    assert (wide.width, wide.height, wide.checkpoint, wide.prompt) == (144, 96, "", "")
    assert wide.upscaler_hash == sha256_file(tiny_models / "ESRGAN" / "tiny-esrgan-2x.safetensors")
    assert wide.init_image and wide.denoising_strength is None and wide.resize_mode == ""
    assert by_axes[("inputs/gradient.png", "Nearest", 2.0)].upscaler_hash is None
    assert [t.id for t in expand(_spec(spec.source_text, tiny_models))] == [t.id for t in tasks]
    # the defaults: Lanczos, 2x; upscale_to instead of upscale_by
    (t,) = expand(_spec("init_images: inputs/wide.png\nupscale_to: 128x128\n", tiny_models))
    assert (t.upscaler, t.upscale_by, t.upscale_to_x, t.upscale_to_y, t.width, t.height) == ("Lanczos", 0, 128, 128,
                                                                                               128, 128)
    (t,) = expand(_spec("init_images: inputs/wide.png\nupscaler: Lanczos\n", tiny_models))
    assert (t.upscale_by, t.width, t.height) == (2.0, 192, 128)


@pytest.mark.parametrize("text, where, message", [
    ("init_images: inputs\nupscaler: Lanczos\nprompt: a cat\n", "3:1",
     "prompt: an upscale job (upscaler, upscale_by, upscale_to) takes only init_images, upscaler, upscale_by"),
    ("init_images: inputs\nupscale_by: 2\ncheckpoint: seedfarm-tiny\n", "3:1", "checkpoint: an upscale job"),
    ("upscaler: Lanczos\n", "1:1", "missing key 'init_images': an upscale job upscales the images it names"),
    ("init_images: inputs\nupscaler: Latent\n", "2:11", "upscaler: 'Latent' works on a diffusion model's latents"),
    ("init_images: inputs\nupscaler: [Lanczos, 4x-UltraSharp]\n", "2:21",
     "upscaler: unknown hires upscaler '4x-UltraSharp'; valid: "),
    ("init_images: inputs\nupscale_by: 2\nupscale_to: 128x128\n", "3:1", "give either upscale_by"),
    ("init_images: inputs\nupscale_to: 128x0\n", "2:13", "upscale_to: 0 is out of range; expected 8 to 16384"),
    ("init_images: inputs\nupscale_by: 9\n", "2:13", "upscale_by: 9 is out of range"),
])
def test_upscale_errors_are_located(tiny_models, text, where, message):
    error = _error(text, tiny_models)
    assert error.startswith(f"{tiny_models / 'job.yaml'}:{where}: ") and message in error, error


def test_an_upscale_too_small_to_make_is_located(tmp_path):
    Image.new("RGB", (5, 5)).save(tmp_path / "dot.png")
    with pytest.raises(SpecError) as e:
        parse_spec("init_images: dot.png\nupscale_by: [2, 1.5]\n", str(tmp_path / "job.yaml"))
    assert str(e.value) == (f"{tmp_path / 'job.yaml'}:2:13: dot: upscale_by 1.5 makes a 5x5 image 0x0 "
                            "(A1111 rounds down to multiples of 8); give a larger scale")


# ---- the kind through the render loop: no checkpoint, A1111's pixels, the source's infotext -----------

def test_upscale_renders_without_a_checkpoint_and_keeps_the_source_infotext(tiny_models, tmp_path):
    from worker.context import configure
    from worker.render_loop import render_tasks
    from worker.upscalers import load_upscaler, upscale

    source = tmp_path / "source"
    source.mkdir()
    gradient = Image.open(tiny_models / "inputs" / "wide.png").convert("RGB")  # 96x64
    text = "a red robot\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 7, Size: 96x64"
    (source / "robot.png").write_bytes(png_bytes(gradient, text))
    spec = parse_spec(f"init_images: {source / 'robot.png'}\nupscaler: [tiny-realesrgan-x4plus, Nearest]\n"
                      "upscale_to: [128x128, 120x120]\n", "job.yaml", tiny_models)
    store = open_store(str(tmp_path / "out"))
    write_job_record(store, spec)  # uploads the input
    ctx = configure(tiny_models)
    failures = {}
    counts, _ = render_tasks(list(expand(spec)), store, ctx, lambda t, s, f: failures.setdefault(t.index, f))
    ctx.writer.flush()
    assert counts["images"] == 4 and set(failures.values()) == {None}
    assert ctx.cache is None and ctx.loads == 0  # no checkpoint (nor a pipeline cache) for an upscale
    model = load_upscaler(tiny_models / "RealESRGAN" / "tiny-realesrgan-x4plus.safetensors")
    for key in store.list_keys(f"{spec.job_id}/records/"):
        record = json.loads(store.read_bytes(key))
        task = record["task"]
        with Image.open(io.BytesIO(store.read_bytes(f"{spec.job_id}/{record['image']}"))) as im:
            assert im.info["parameters"] == text == record["parameters"]  # the source's, unchanged
            to = f"{task['upscale_to_x']}x{task['upscale_to_y']}"
            assert im.info["postprocessing"] == im.info["extras"] == (
                f"Postprocess upscale to: {to}, Postprocess crop to: {to}, Postprocess upscaler: {task['upscaler']}")
            pixels = np.asarray(im.convert("RGB")).astype(int)
        # A1111's "Scale to": by the larger ratio (model passes, Lanczos to multiples of 8), centred, cut
        x, y = task["upscale_to_x"], task["upscale_to_y"]
        by = max(x / 96, y / 64)
        up = upscale(gradient, by, model if task["upscaler"] != "Nearest" else "Nearest")
        canvas = Image.new("RGB", (x, y))
        canvas.paste(up, (x // 2 - up.width // 2, y // 2 - up.height // 2))
        assert pixels.shape == (y, x, 3) and np.abs(pixels - np.asarray(canvas).astype(int)).max() <= 1
    # 120x120 from 96x64: covered at 1.875x (180x120, to multiples of 8: 176x120), then cut left and right
    assert upscale(gradient, 120 / 64, "Nearest").size == (176, 120)


# ---- farm run ---------------------------------------------------------------------------------------

def test_farm_run_of_the_upscale_example(tmp_path):
    models = tmp_path / "models"
    made = farm("models", "make-tiny", str(models))
    assert made.returncode == 0, made.stderr
    spec = tmp_path / "upscale.yaml"
    shutil.copy(REPO / "jobs" / "upscale.yaml", spec)
    result = farm("run", str(spec), "--out", str(tmp_path / "out"), "--models", str(models))
    assert result.returncode == 0, result.stderr
    (folder,) = (tmp_path / "out").iterdir()
    records = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 12 and len(list((folder / "sheets").glob("*.png"))) == 3
    seen = set()
    for record in records:
        task = record["task"]
        with Image.open(folder / record["image"]) as im:
            assert im.size == (task["width"], task["height"])
            scale = task["upscale_by"]
            assert im.info["postprocessing"] == (f"Postprocess upscale by: {scale:g}, "
                                                 f"Postprocess upscaler: {task['upscaler']}")
        seen.add((task["upscaler"], scale, im.size))
    assert ("tiny-esrgan-2x", 3.0, (288, 192)) in seen and ("Lanczos", 2.0, (128, 128)) in seen


def test_farm_run_upscales_a_finished_jobs_images_keeping_their_infotext(tiny_models, tmp_path):
    out = tmp_path / "out"
    first = tmp_path / "robots.yaml"
    first.write_text("name: robots\nprompt: a red robot\ncheckpoint: seedfarm-tiny\nseed: [1, 2]\nsize: 64x64\n"
                     "steps: 2\n")
    assert farm("run", str(first), "--out", str(out), "--models", str(tiny_models)).returncode == 0
    (job,) = [p.name for p in out.iterdir()]
    second = tmp_path / "bigger.yaml"
    second.write_text(f"name: bigger\ninit_images: {{job: {job}}}\nupscaler: tiny-compact-2x\nupscale_by: 2\n")
    result = farm("run", str(second), "--out", str(out), "--models", str(tiny_models))
    assert result.returncode == 0, result.stderr
    sources = {read_parameters(p) for p in (out / job / "images").glob("*.png")}
    (upscaled,) = [p for p in out.iterdir() if p.name.startswith("bigger-")]
    images = sorted((upscaled / "images").glob("*.png"))
    assert len(images) == 2 and {read_parameters(p) for p in images} == sources
    for path in images:
        with Image.open(path) as im:
            assert im.size == (128, 128)
            assert im.info["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: tiny-compact-2x"


def test_submit_and_a_worker_upscale_from_the_store_without_loading_a_checkpoint(redis_server, tiny_models,
                                                                                  start_worker, tmp_path):
    import time

    from farm.ledger import Ledger

    spec = tmp_path / "up.yaml"
    spec.write_text("name: up\ninit_images: inputs\nupscaler: [tiny-compact-2x, Nearest]\nupscale_by: 2\n")
    store = str(tmp_path / "store")
    worker = start_worker(redis_server.url, tiny_models, "alpha")
    worker.wait_ready()
    result = farm("submit", str(spec), "--broker", redis_server.url, "--store", store, "--models", str(tiny_models))
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    ledger = Ledger(redis_server.client())
    deadline = time.monotonic() + 120
    while ledger.job_info(job).get("status") != "complete":
        assert time.monotonic() < deadline, worker.text()
        time.sleep(0.3)
    records = [json.loads(line) for line in (tmp_path / "store" / job / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {r["worker"] for r in records} == {"alpha"}
    for record in records:
        with Image.open(tmp_path / "store" / job / record["image"]) as im:
            assert im.size == (record["task"]["width"], record["task"]["height"])
            assert im.info["postprocessing"].endswith(f"Postprocess upscaler: {record['task']['upscaler']}")
    assert "loaded checkpoint" not in worker.text()  # the worker read the inputs from the store by hash


def test_stars_of_an_upscale_job_export_as_an_upscale_spec(tiny_models, tmp_path):
    from farm.review.starspec import starred_spec

    spec = _spec("init_images: inputs\nupscaler: [tiny-esrgan-2x, Nearest]\nupscale_by: [2, 3]\n", tiny_models)
    store = open_store(str(tmp_path / "store"))
    write_job_record(store, spec)  # the export names the init images by their keys in the job's store
    starred = [t for t in expand(spec) if t.upscale_by == 3 or t.upscaler == "Nearest"]
    text, count = starred_spec("up", [{"task": t.model_dump(), "seed": t.seed} for t in starred], "up")
    assert count == len(starred) == 9 and "prompt" not in text and "checkpoint" not in text
    again = _spec(text, tiny_models, store=store)
    assert {t.id for t in expand(again)} == {t.id for t in starred}
