"""End to end: the real `farm` CLI renders the example specs with the tiny model, no servers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO, farm
from farm.hires import output_size
from farm.infotext import parse_infotext, read_parameters
from farm.spec import load_spec
from farm.task import RenderTask

EXAMPLES = sorted((REPO / "jobs").glob("*.yaml"))


def job_folder(out: Path) -> Path:
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return folder


def check_job_folder(folder: Path, spec_path: Path, models: Path) -> list[dict]:
    """Every image is a PNG whose infotext matches its task; the manifest lists each exactly once."""
    spec = load_spec(spec_path, models_dir=models)
    records = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == spec.image_count()
    assert len({(r["task_id"], r["seed"]) for r in records}) == len(records)
    assert sorted(p.name for p in (folder / "images").glob("*.png")) == sorted(
        Path(r["image"]).name for r in records
    )
    for record in records:
        task = RenderTask.from_json(record["task"])
        assert task.id == task.content_id() == record["task_id"]
        image_path = folder / record["image"]
        with Image.open(image_path) as im:
            assert im.size == output_size(task)  # the first pass's, or a hires task's second pass's
            postprocessing = im.info.get("postprocessing")
        text = read_parameters(image_path)
        assert text == (record["parameters"] or None)
        if task.kind == "upscale":  # A1111's Extras: the source's infotext (none here), what it did beside it
            assert postprocessing.startswith("Postprocess upscale by: ") and record["render_seconds"] > 0
            continue
        prompt, negative, params = parse_infotext(text)
        assert prompt == task.prompt and negative == task.negative_prompt
        assert params["Seed"] == record["seed"] and params["Steps"] == task.steps
        assert params["Sampler"] == task.sampler
        assert params["Size"] == f"{task.width}x{task.height}"
        assert params["Model"] == task.checkpoint
        assert params["Model hash"] == task.checkpoint_hash[:10] == record["model_hash"]
        assert float(params["CFG scale"]) == task.cfg
        assert "Version" in params
        assert record["render_seconds"] > 0
    return records


def sheet_meta(path: Path) -> dict:
    with Image.open(path) as im:
        return json.loads(im.info["seedfarm-grid"]) | {"size": im.size}


@pytest.mark.parametrize("spec_path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_farm_run_renders_every_example(spec_path, tiny_models, tmp_path):
    out = tmp_path / "out"
    result = farm("run", str(spec_path), "--out", str(out), "--models", str(tiny_models))
    assert result.returncode == 0, result.stderr
    assert "images/s" in result.stderr and "contact sheet" in result.stderr
    folder = job_folder(out)
    records = check_job_folder(folder, spec_path, tiny_models)
    assert (folder / "job.yaml").read_text() == spec_path.read_text()
    sheets = sorted((folder / "sheets").glob("*.png"))
    assert sheets, "a contact sheet is written"
    varying = {k for k in records[0]["axes"] if len({json.dumps(r["axes"][k]) for r in records}) > 1}
    if "prompt_matrix: true" in spec_path.read_text():
        varying |= {"matrix_x", "matrix_y"}  # the prompt matrix is laid out as A1111 does (docs/review.md)
    for sheet in sheets:
        meta = sheet_meta(sheet)
        assert meta["x"] in varying
        # each labelled column holds one 64 px image: the sheet is at least that wide plus labels
        assert meta["size"][0] > len(meta["x_labels"]) * 64
        if meta["y"]:
            assert meta["size"][1] > len(meta["y_labels"]) * 64


def test_demo_without_spec_writes_tiny_model_images_manifest_and_sheet(tmp_path):
    """`farm run` alone: the README's first command on a fresh machine."""
    result = farm("run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote the built-in tiny model" in result.stderr
    assert (tmp_path / "models" / "Stable-diffusion" / "seedfarm-tiny.safetensors").is_file()
    folder = job_folder(tmp_path / "outputs")
    check_job_folder(folder, REPO / "farm" / "data" / "demo.yaml", tmp_path / "models")
    meta = sheet_meta(next((folder / "sheets").glob("*.png")))
    demo = load_spec(REPO / "farm" / "data" / "demo.yaml")
    assert (meta["x"], meta["y"]) == (demo.grid_x, demo.grid_y)
    assert all(label.split(":")[0] for label in meta["x_labels"] + meta["y_labels"])

    again = farm("run", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 images rendered" in again.stderr and "already done" in again.stderr


def test_rerun_renders_only_what_is_missing(tiny_models, tmp_path):
    spec = REPO / "jobs" / "demo.yaml"
    out = tmp_path / "out"
    assert farm("run", str(spec), "--out", str(out), "--models", str(tiny_models)).returncode == 0
    folder = job_folder(out)
    victim = sorted((folder / "images").glob("*.png"))[0]
    victim.unlink()
    (folder / "records" / (victim.stem + ".json")).unlink()
    before = {p.name: p.stat().st_mtime_ns for p in (folder / "images").glob("*.png")}
    result = farm("run", str(spec), "--out", str(out), "--models", str(tiny_models))
    assert result.returncode == 0, result.stderr
    assert "1 images rendered" in result.stderr
    assert victim.exists()
    after = {p.name: p.stat().st_mtime_ns for p in (folder / "images").glob("*.png") if p.name in before}
    assert after == before, "images already done are not rendered again"
    check_job_folder(folder, spec, tiny_models)


def test_grid_command_rebuilds_sheets_with_chosen_axes(tiny_models, tmp_path):
    spec = REPO / "jobs" / "demo.yaml"
    out = tmp_path / "out"
    assert farm("run", str(spec), "--out", str(out), "--models", str(tiny_models)).returncode == 0
    folder = job_folder(out)
    shutil.rmtree(folder / "sheets")
    axes = load_spec(spec).swept_axes()
    result = farm("grid", str(folder), "--x", axes[-1], "--y", axes[0])
    assert result.returncode == 0, result.stderr
    sheets = sorted((folder / "sheets").glob("*.png"))
    assert sheets and all(sheet_meta(s)["x"] == axes[-1] and sheet_meta(s)["y"] == axes[0] for s in sheets)

    bad = farm("grid", str(folder), "--x", "no_such_axis")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "no_such_axis" in bad.stderr


def test_validate_and_expand(tiny_models):
    spec = REPO / "jobs" / "demo.yaml"
    job = load_spec(spec, models_dir=tiny_models)
    result = farm("validate", str(spec), "--models", str(tiny_models))
    assert result.returncode == 0, result.stderr
    assert f"{job.task_count()}" in result.stdout
    lines = farm("expand", str(spec), "--json", "--models", str(tiny_models)).stdout.splitlines()
    tasks = [RenderTask.from_json(line) for line in lines]
    assert len(tasks) == job.task_count()
    assert [t.index for t in tasks] == list(range(len(tasks)))
    assert all(t.id == t.content_id() and t.checkpoint_hash for t in tasks)


def test_spec_errors_are_one_line_with_position(tmp_path, tiny_models):
    cases = {
        "unknown key": ("prompt: a cat\nsed: 1\ncheckpoint: seedfarm-tiny\n", 2),
        "bad range": ("prompt: a cat\nseed: 10-\ncheckpoint: seedfarm-tiny\n", 2),
        "unknown sampler": ("prompt: a cat\nsampler: Eulr a\ncheckpoint: seedfarm-tiny\nseed: 1\n", 2),
        "unknown checkpoint": ("prompt: a cat\ncheckpoint: nope\nseed: 1\n", 2),
        "yaml syntax": ("prompt: a cat\nseed: [1, 2\ncheckpoint: seedfarm-tiny\n", 3),
    }
    for name, (text, line) in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        result = farm("validate", str(path), "--models", str(tiny_models))
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (name, result.stderr)
        assert lines[0].startswith(f"{path}:{line}:"), (name, lines[0])


def test_corrupt_checkpoint_is_one_clear_line_and_keeps_nothing_half_done(tmp_path):
    models = tmp_path / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    (models / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    spec = tmp_path / "job.yaml"
    spec.write_text("prompt: a cat\ncheckpoint: broken\nsize: 64x64\nsteps: 2\nseed: [1, 2]\n")
    result = farm("run", str(spec), "--out", str(tmp_path / "out"), "--models", str(tmp_path / "models"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "broken.safetensors" in result.stderr
    assert not list((tmp_path / "out").rglob("*.png"))
