"""The input-images seam (farm/inputs.py, farm/spec/inputs.py, worker/inputs.py): init_images from a
file, a folder, a list or a job of the store; pinned by content hash; hostile inputs refused with a
located error; uploaded with the job record; read back and verified on the worker."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from farm.expand import expand
from farm.inputs import MAX_INPUT_BYTES, label, upload
from farm.jobs import read_job, write_job_record
from farm.spec import SpecError, parse_spec
from farm.store import MemoryStore, image_record, layout, save_image
from worker.context import TaskError
from worker.inputs import InputCache, read_input
from worker.tiny import make_tiny_inputs

BASE = "prompt: a cat\ncheckpoint: x\nseed: 1\n"


@pytest.fixture
def folder(tmp_path):
    make_tiny_inputs(tmp_path)
    return tmp_path


def spec_of(folder, extra: str, **kw):
    return parse_spec(BASE + extra, str(folder / "job.yaml"), **kw)


def test_a_folder_is_an_axis_in_name_order_and_tasks_pin_the_bytes(folder):
    spec = spec_of(folder, "init_images: inputs\n")
    assert spec.values["init_images"] == ["inputs/cutout.png", "inputs/gradient.png", "inputs/wide.png"]
    tasks = list(expand(spec))
    assert [t.kind for t in tasks] == ["img2img"] * 3
    assert all(t.init_image.endswith(".png") and len(t.init_image) == 68 for t in tasks)
    assert tasks[0].axes["init_images"] == "inputs/cutout.png"
    # the same files under another path: other axis values, the same task ids
    (folder / "copy").mkdir()
    for p in (folder / "inputs").iterdir():
        (folder / "copy" / p.name).write_bytes(p.read_bytes())
    again = list(expand(spec_of(folder, "init_images: copy\n")))
    assert [t.id for t in again] == [t.id for t in tasks]
    # other bytes: another id
    Image.new("RGB", (64, 64), "red").save(folder / "copy" / "gradient.png")
    changed = list(expand(spec_of(folder, "init_images: copy\n")))
    assert changed[1].id != tasks[1].id and changed[0].id == tasks[0].id


def test_files_list_and_models_folder_lookup(tiny_models, tmp_path):  # conftest writes its inputs/
    text = "prompt: a\ncheckpoint: seedfarm-tiny\nseed: 1\ninit_images: [inputs/wide.png, inputs/gradient.png]\n"
    spec = parse_spec(text, str(tmp_path / "j.yaml"), models_dir=tiny_models)
    assert spec.values["init_images"] == ["inputs/wide.png", "inputs/gradient.png"]
    assert spec.input_image("init_images", "inputs/wide.png").width == 96


@pytest.mark.parametrize("setup, text, message", [
    (lambda d: (d / "empty.png").write_bytes(b""), "init_images: empty.png", "the file is empty"),
    (lambda d: (d / "x.png").write_text("hello"), "init_images: x.png", "not an image Pillow can read"),
    (lambda d: (d / "none").mkdir(), "init_images: none", "no image files"),
    (lambda d: None, "init_images: missing.png", "no file or folder missing.png"),
    (lambda d: (d / "big.png").write_bytes(b"\x89PNG" + b"\0" * (MAX_INPUT_BYTES + 1)), "init_images: big.png",
     "the limit is"),
    (lambda d: None, "init_images: {job: nope}", "give it (--store"),
    (lambda d: None, "init_images: [inputs/gradient.png, inputs/gradient.png]", "same image"),
    (lambda d: None, "init_images: inputs\nresize_mode: Just resize (latent upscale)", "latent upscale mode"),
    (lambda d: None, "resize_mode: Crop and resize", "add init_images"),
    (lambda d: None, "init_images: inputs\nhr_scale: 2", "hires fix is txt2img's"),
])
def test_hostile_inputs_are_located_spec_errors(folder, setup, text, message):
    setup(folder)
    with pytest.raises(SpecError) as e:
        spec_of(folder, text + "\n")
    assert message in str(e.value)
    assert str(e.value).startswith(str(folder / "job.yaml") + ":4:") or ":5:" in str(e.value)


def test_a_pixel_bomb_is_refused_before_decoding(folder):
    Image.new("1", (9000, 9000)).save(folder / "bomb.png")  # a few KB that claim 81 megapixels
    with pytest.raises(SpecError, match="megapixels"):
        spec_of(folder, "init_images: bomb.png\n")


def test_upload_then_resume_without_the_files_gives_the_same_tasks(folder):
    spec = spec_of(folder, "init_images: inputs\n")
    store = MemoryStore()
    write_job_record(store, spec)
    keys = [k for k in store.list_keys(f"{spec.job_id}/inputs/")]
    assert len(keys) == 3
    for p in (folder / "inputs").iterdir():
        p.unlink()  # another coordinator: no files, only the store
    again = read_job(store, spec.job_id).spec()
    assert [t.id for t in expand(again)] == [t.id for t in expand(spec)]
    assert upload(store, spec.job_id, again.input_images()) == 0  # all there: nothing written


def test_a_jobs_starred_images_are_inputs_of_another(folder):
    store = MemoryStore()
    first = spec_of(folder, "")
    write_job_record(store, first)
    for task in expand(first):
        buf = (folder / "inputs" / "gradient.png").read_bytes()
        save_image(store, task, task.seed, buf, image_record(task, task.seed, "x", 0.1, "w"))
    spec = spec_of(folder, f"init_images: {{job: {first.job_id}, filter: all}}\n", store=store)
    assert len(spec.values["init_images"]) == 1 and spec.values["init_images"][0].startswith(first.job_id)
    with pytest.raises(SpecError, match="no starred images"):
        spec_of(folder, f"init_images: {{job: {first.job_id}, filter: starred}}\n", store=store)
    with pytest.raises(SpecError, match="has no job nope"):
        spec_of(folder, "init_images: {job: nope}\n", store=store)
    # a value naming an image by its store key (what {job: ...} and the star export write)
    key = spec.values["init_images"][0]
    again = spec_of(folder, f"init_images: [{key}]\n", store=store)
    assert again.input_image("init_images", key).name == spec.input_image("init_images", key).name
    stored = f"{first.job_id}/inputs/{'0' * 64}.png"
    with pytest.raises(SpecError, match="no file or folder"):
        spec_of(folder, f"init_images: {stored}\n", store=store)
    assert label(stored) == "0" * 10 and label("a/b/cat.webp") == "cat"


def test_worker_reads_verifies_and_flattens(folder):
    spec = spec_of(folder, "init_images: inputs/cutout.png\n")
    store = MemoryStore()
    write_job_record(store, spec)
    task = next(expand(spec))
    image = InputCache(store).of(task)["init_image"]
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)  # transparent corner: white
    key = layout.input_key(task.job, task.init_image)
    store.write_bytes(key, store.read_bytes(key) + b"x")
    with pytest.raises(TaskError, match="altered"):
        read_input(store, task.job, task.init_image)
    store.delete(key)
    with pytest.raises(TaskError, match="not in the store"):
        read_input(store, task.job, task.init_image)
    assert json.loads(json.dumps(task.model_dump()))["init_image"] == task.init_image


def test_farm_run_with_a_bad_input_is_one_located_line_and_nothing_runs(folder, tiny_models):
    from conftest import farm

    (folder / "empty.png").write_bytes(b"")
    spec = folder / "bad.yaml"
    spec.write_text("prompt: a\ncheckpoint: seedfarm-tiny\nseed: 1\ninit_images: [inputs/wide.png, empty.png]\n")
    result = farm("run", str(spec), "--out", str(folder / "out"), "--models", str(tiny_models))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"{spec}:4:32: init_images: empty.png: the file is empty"
    assert not (folder / "out").exists() or not any((folder / "out").iterdir())
