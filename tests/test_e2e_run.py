"""End to end: the real `farm` CLI renders the example specs with the tiny model, no servers, and
fetches the models a spec gives by URL (a local HTTP server is the internet) or a depot holds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO, farm, free_port
from farm.hashes import sha256_file
from farm.hires import output_size
from farm.infotext import parse_infotext, read_parameters
from farm.models import lora_hash
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


# --- `farm run` fetches what the models folder lacks (worker/model_cache.py, as `farm worker`) --------


def url_spec(base: str, ckpt_sha: str, lora_sha: str, seeds: str = "[1, 2]") -> str:
    return f"""\
name: by-url
prompt: a red robot
checkpoint: {{url: "{base}/tiny15.safetensors", sha256: {ckpt_sha}}}
lora: {{url: "hf://org/loras/style15.safetensors", sha256: {lora_sha}}}
lora_weight: 0.8
seed: {seeds}
steps: 2
sampler: Euler
size: 64x64
"""


@pytest.fixture
def served(web, tmp_path_factory, tmp_path, monkeypatch):
    """tiny15 and style15 on the local HTTP server (the internet of these tests); the tiny
    checkpoint's config as SD1.5's, since its `.config` folder does not travel with it."""
    from model_tree import a1111_tree
    from test_e2e_depot import serve_tiny15_and_style15, tiny_configs

    root, base = web
    tree = a1111_tree(tmp_path_factory)
    ckpt, lora = serve_tiny15_and_style15(tree, root)
    monkeypatch.setenv("HF_ENDPOINT", base)
    monkeypatch.setenv("FARM_CONFIGS_DIR", str(tiny_configs(tree, tmp_path / "configs")))
    return base, tree, ckpt, lora


def test_farm_run_fetches_a_checkpoint_and_lora_given_by_url_verifies_and_caches_them(served, tmp_path):
    base, _, ckpt, lora = served
    empty, cache = tmp_path / "empty-models", tmp_path / "cache"
    empty.mkdir()
    spec = tmp_path / "job.yaml"
    spec.write_text(url_spec(base, sha256_file(ckpt), sha256_file(lora)))
    run = ("run", str(spec), "--models", str(empty), "--model-cache", str(cache))
    result = farm(*run, "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "fetched Stable-diffusion/tiny15.safetensors" in result.stderr
    assert "fetched Lora/style15.safetensors" in result.stderr
    records = [json.loads(line) for line in (job_folder(tmp_path / "out") / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 2
    _, _, params = parse_infotext(read_parameters(job_folder(tmp_path / "out") / records[0]["image"]))
    assert params["Model"] == "tiny15" and params["Model hash"] == sha256_file(ckpt)[:10]
    assert params["Lora hashes"] == f"style15: {lora_hash(lora)[:12]}"
    assert not list(empty.iterdir())  # nothing written into the user's own folder
    assert next(cache.rglob("tiny15.safetensors")).read_bytes() == ckpt.read_bytes()
    assert next(cache.rglob("style15.safetensors")).read_bytes() == lora.read_bytes()

    # the next run starts from the cache: nothing fetched again, the same images
    again = farm(*run, "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert "fetched" not in again.stderr
    for record in records:
        assert (job_folder(tmp_path / "again") / record["image"]).read_bytes() == \
            (job_folder(tmp_path / "out") / record["image"]).read_bytes()


def test_farm_run_with_a_wrong_sha256_or_offline_says_so_in_one_line_and_writes_nothing(served, tmp_path):
    base, _, ckpt, lora = served
    empty, cache = tmp_path / "empty-models", tmp_path / "cache"
    empty.mkdir()
    spec = tmp_path / "job.yaml"
    wrong = sha256_file(lora.with_name("detail15.safetensors"))  # the LoRA pinned to another file
    spec.write_text(url_spec(base, sha256_file(ckpt), wrong))
    result = farm("run", str(spec), "--out", str(tmp_path / "out"), "--models", str(empty), "--model-cache", str(cache))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: the file at hf://org/loras/style15.safetensors of lora")
    assert f"pinned {wrong[:10]}" in line
    assert not list(cache.rglob("style15*")) and not [f for f in cache.rglob("*") if ".tmp" in f.name]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.png"))

    spec.write_text(url_spec(f"http://127.0.0.1:{free_port()}", sha256_file(ckpt), sha256_file(lora)))
    offline = farm("run", str(spec), "--out", str(tmp_path / "out"), "--models", str(empty), "--model-cache",
                   str(tmp_path / "empty-cache"))  # an empty cache: the checkpoint is fetched above
    assert offline.returncode == 1 and "Traceback" not in offline.stderr
    (line,) = offline.stderr.strip().splitlines()
    assert line.startswith("error: cannot reach http://127.0.0.1:") and line.endswith("is this PC online?")
    assert not list((tmp_path / "out").rglob("*.png"))


def test_farm_run_with_a_depot_fetches_the_models_the_folder_lacks(served, tmp_path):
    _, tree, ckpt, _ = served
    depot = str(tmp_path / "depot")
    pushed = farm("models", "push", "tiny15", "style15", "--store", depot, "--models", str(tree))
    assert pushed.returncode == 0, pushed.stderr
    empty = tmp_path / "empty-models"
    empty.mkdir()
    spec = tmp_path / "job.yaml"
    spec.write_text("prompt: a red robot <lora:style15:0.8>\ncheckpoint: tiny15\nseed: 1\nsteps: 2\nsampler: Euler\n"
                    "size: 64x64\n")
    run = ("run", str(spec), "--out", str(tmp_path / "out"), "--models", str(empty),
           "--model-cache", str(tmp_path / "cache"))
    result = farm(*run, "--depot", depot)  # without it: the spec's 'unknown checkpoint' error
    assert result.returncode == 0, result.stderr
    assert "fetched Stable-diffusion/tiny15.safetensors" in result.stderr and "fetched Lora/style15" in result.stderr
    manifest = job_folder(tmp_path / "out") / "manifest.jsonl"
    (record,) = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert record["model_hash"] == sha256_file(ckpt)[:10] and not list(empty.iterdir())
