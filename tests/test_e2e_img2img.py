"""img2img end to end: `farm submit` + a real `farm worker` over Redis (the worker has no input
files: it reads them from the store by content hash, and the same spec resubmitted has the same
task ids), the review page showing each result's init image in Chromium, the contact sheet's
init-image headers, and a job's starred images as the init images of the next job."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import farm
from farm.ledger import Ledger
from farm.sheets import read_grid_info
from test_e2e_farm import wait_complete, wait_for
from test_review import ReviewServer
from worker.tiny import make_tiny_inputs

SPEC = """\
name: i2i
prompt: a watercolor landscape
checkpoint: seedfarm-tiny
size: 64x64
steps: 2
sampler: Euler a
seed: 5
init_images: inputs
denoising_strength: 0.6
resize_mode: Crop and resize
grid: {x: init_images}
"""


@pytest.fixture
def spec(tmp_path) -> Path:
    client = tmp_path / "client"  # the submitting PC: the only place the input files are
    make_tiny_inputs(client)
    path = client / "i2i.yaml"
    path.write_text(SPEC)
    return path


def _records(store_dir: Path, job: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((store_dir / job / "records").glob("*.json"))]


def test_redis_worker_reads_inputs_from_the_store_and_resubmit_keeps_ids(redis_server, tiny_models, start_worker,
                                                                          spec, tmp_path):
    store_dir = tmp_path / "store"
    args = ("--broker", redis_server.url, "--store", str(store_dir), "--models", str(tiny_models))
    first = farm("submit", str(spec), *args)
    assert first.returncode == 0, first.stderr
    job = first.stdout.strip()
    assert "queued 3 tasks" in first.stderr
    inputs = {p.name for p in (store_dir / job / "inputs").iterdir()}
    local = {hashlib.sha256(p.read_bytes()).hexdigest() + ".png" for p in (spec.parent / "inputs").iterdir()}
    assert inputs == local  # uploaded by content hash at submit
    moved = tmp_path / "moved"
    shutil.move(spec.parent / "inputs", moved)  # the worker cannot read the client's files
    start_worker(redis_server.url, tiny_models, "alpha")
    ledger = Ledger(redis_server.client())
    wait_complete(ledger, job)
    records = _records(store_dir, job)
    assert {r["task"]["init_image"] for r in records} == inputs
    assert all("Denoising strength: 0.6" in r["parameters"] for r in records)
    ids = sorted(r["task_id"] for r in records)
    # the same spec with the same files: the same job and task ids, so nothing renders again
    shutil.move(moved, spec.parent / "inputs")
    again = farm("submit", str(spec), *args)
    assert again.returncode == 0 and again.stdout.strip() == job
    wait_complete(ledger, job)  # the worker finds every task's records: nothing rendered again
    expanded = farm("expand", str(spec), "--json", "--models", str(tiny_models))
    assert sorted(json.loads(line)["id"] for line in expanded.stdout.splitlines() if line.strip()) == ids
    assert sorted(r["task_id"] for r in _records(store_dir, job)) == ids
    assert len(list((store_dir / job / "images").iterdir())) == 3


@pytest.fixture
def rendered(tiny_models, spec, tmp_path) -> tuple[Path, str]:
    out = tmp_path / "out"
    result = farm("run", str(spec), "--out", str(out), "--models", str(tiny_models))
    assert result.returncode == 0, result.stderr
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return out, folder.name


def test_sheet_headers_review_page_and_starred_images_as_next_inputs(rendered, tiny_models, browser, tmp_path):
    out, job = rendered
    (sheet,) = (out / job / "sheets").glob("*.png")
    info = read_grid_info(sheet)
    assert info["x_labels"] == ["Init image: cutout", "Init image: gradient", "Init image: wide"]
    assert info["origin"][1] >= 32  # the init images drawn as headers above the cells

    server = ReviewServer(str(out))
    page = browser.new_page()
    try:
        page.goto(f"{server.url}/#/job/{job}")
        page.wait_for_selector(".cell img.init")
        page.wait_for_function("() => [...document.querySelectorAll('.cell img')].every(i => i.complete)")
        widths = page.locator(".cell img.init").evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
        assert sorted(widths) == [64, 64, 96]  # each result's own init image, served from the store
        page.locator(".cell").first.click()
        assert page.locator("#zoom-init").is_visible()
        page.wait_for_function("() => document.querySelector('#zoom-init img').naturalWidth > 0")
        page.keyboard.press("s")  # star the first result
        wait_for(lambda: list((out / job / "review" / "marks").glob("*.json")), 10, "the star")
    finally:
        page.close()
        server.stop()

    starred = tmp_path / "next.yaml"
    starred.write_text(SPEC.replace("init_images: inputs", f"init_images: {{job: {job}, filter: starred}}")
                       .replace("name: i2i", "name: refine").replace("grid: {x: init_images}\n", ""))
    result = farm("run", str(starred), "--out", str(out), "--models", str(tiny_models))
    assert result.returncode == 0, result.stderr
    (refined,) = [p for p in out.iterdir() if p.name.startswith("refine-")]
    (record,) = _records(out, refined.name)
    (star,) = (out / job / "review" / "marks").glob("*.json")
    source = out / job / "images" / f"{star.stem}.png"
    assert record["task"]["init_image"] == hashlib.sha256(source.read_bytes()).hexdigest() + ".png"
    # the star export names the init image by its key in the store: it renders the star again
    export = farm("review", "--export", str(out / job))
    assert export.returncode == 0, export.stderr
    stars = (out / job / "review" / "stars.yaml").read_text()
    assert f"init_images: {job}/inputs/" in stars
    (out / "stars.yaml").write_text(stars)
    again = farm("run", str(out / "stars.yaml"), "--out", str(out), "--models", str(tiny_models))
    assert again.returncode == 0, again.stderr
    (copy,) = [p for p in out.iterdir() if p.name.startswith(f"{job.split('-')[0]}-stars")]
    (image,) = (copy / "images").glob("*.png")
    assert image.read_bytes() == source.read_bytes() or _same_pixels(image, source)


def _same_pixels(a: Path, b: Path) -> bool:
    from PIL import Image

    return Image.open(a).tobytes() == Image.open(b).tobytes()
