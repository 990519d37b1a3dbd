"""The review page end to end: a job rendered by the real `farm run`, served by the real
`farm review`, driven in a real headless Chromium (one per module): axes, filters, zoom,
keyboard, shared stars, live images, the exported spec, the static copy, and a bucket."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import boto3
import pytest

from conftest import FARM_BIN, REPO, farm, free_port, wait_for_port
from farm.sheets import read_grid_info
from farm.store import open_store

ARTIFACTS = REPO / "test-artifacts"


class ReviewServer:
    """`farm review` in a subprocess on 127.0.0.1."""

    def __init__(self, store: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(FARM_BIN), "review", "--store", store, "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def rendered(tiny_models, tmp_path_factory) -> Path:
    """The demo job (cfg x sampler x seed, 8 images of 64x64, 2 steps), rendered once."""
    out = tmp_path_factory.mktemp("review") / "out"
    result = farm("run", str(REPO / "jobs" / "demo.yaml"), "--out", str(out), "--models", str(tiny_models))
    assert result.returncode == 0, result.stderr
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return folder


@pytest.fixture
def job(rendered, tmp_path) -> Path:
    """A fresh copy of the rendered job per test: marks of one test do not leak into another."""
    folder = tmp_path / "store" / rendered.name
    shutil.copytree(rendered, folder)
    return folder


@pytest.fixture
def server(job):
    srv = ReviewServer(str(job.parent))
    yield srv
    srv.stop()


@pytest.fixture
def page(browser):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def column_labels(page) -> list[str]:
    return [t.strip() for t in page.locator("table.grid thead th:not(.corner)").all_inner_texts()]


def row_labels(page) -> list[str]:
    return [t.strip() for t in page.locator("table.grid tbody th").all_inner_texts()]



def image_widths(page) -> list[int]:
    """The grid images' natural widths, once the browser has loaded (or failed) every one."""
    page.wait_for_function("() => [...document.querySelectorAll('.cell img')].every(i => i.complete)")
    return page.locator(".cell img").evaluate_all("imgs => imgs.map(i => i.naturalWidth)")


def test_axes_filter_zoom_keyboard_star_and_reload(server, job, page):
    page.goto(f"{server.url}/")
    page.get_by_role("link", name="demo").click()  # the job list links the job
    page.wait_for_selector(".cell")
    # the spec's grid: cfg across, sampler down; seed is a filter
    assert column_labels(page) == ["CFG scale\n5", "CFG scale\n7"]
    assert row_labels(page) == ["Sampler\nEuler a", "Sampler\nDPM++ 2M Karras"]
    assert page.locator(".cell").count() == 4
    assert "8 / 8 images" in page.inner_text("main")

    # any axis on columns: seeds across, cfg becomes a filter
    page.select_option("label:has-text('Columns (x)') select", "seed")
    assert column_labels(page) == ["Seed\n1000", "Seed\n1001"]
    page.select_option("select[data-axis=cfg]", "7")
    labels = page.locator(".cell").evaluate_all("cells => cells.map(c => c.getAttribute('aria-label'))")
    assert len(labels) == 4 and all("CFG scale: 7" in label for label in labels)
    # sticky axis labels: the header stays at the top of the scrolled grid
    assert page.locator("table.grid thead th").first.evaluate("th => getComputedStyle(th).position") == "sticky"

    # zoom to one image: its infotext; arrows walk to its neighbours; Esc closes
    page.locator(".cell").first.click()
    dialog = page.locator("dialog#zoom")
    assert dialog.is_visible()
    params = page.inner_text("#zoom-params")
    assert "Seed: 1000" in params and "CFG scale: 7" in params and "Sampler: Euler a" in params
    page.keyboard.press("ArrowRight")
    assert "Seed: 1001" in page.inner_text("#zoom-params")
    page.keyboard.press("ArrowDown")
    assert "Schedule type: Karras" in page.inner_text("#zoom-params")
    page.keyboard.press("s")  # star it
    page.wait_for_selector("#zoom-star[aria-pressed=true]")
    page.keyboard.press("Escape")
    assert not dialog.is_visible()
    starred = page.locator(".cell.star")
    assert starred.count() == 1 and "Seed: 1001" in starred.get_attribute("aria-label")
    # keyboard on the grid: the closed zoom gives focus back to its cell; x rejects the one left of it
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("x")
    page.wait_for_selector(".cell.reject")

    # the marks are in the store, one object per image
    marks = {p.stem: json.loads(p.read_text())["mark"] for p in (job / "review" / "marks").glob("*.json")}
    assert sorted(marks.values()) == ["reject", "star"]

    page.reload()  # the view (axes, filter) and the marks come back
    page.wait_for_selector(".cell.star")
    assert column_labels(page) == ["Seed\n1000", "Seed\n1001"]
    assert page.locator(".cell.star").count() == 1 and page.locator(".cell.reject").count() == 1
    assert "1 starred · 1 rejected" in page.inner_text("main")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "review-grid.png"), full_page=True)


def test_another_reviewers_stars_appear_and_the_export_is_a_valid_spec(server, job, page, tmp_path):
    page.goto(f"{server.url}/#/job/{job.name}")
    page.wait_for_selector(".cell")
    assert page.get_attribute("text=Export stars as job spec", "aria-disabled") == "true"
    # someone else stars a diagonal (no product of axes) through the API
    records = [json.loads(p.read_text()) for p in sorted((job / "records").glob("*.json"))]
    diagonal = {(5, 1000), (7, 1001)}
    chosen = [r for r in records if r["axes"]["sampler"] == "Euler a" and (r["axes"]["cfg"], r["seed"]) in diagonal]
    assert len(chosen) == 2
    for record in chosen:
        stem = Path(record["image"]).stem
        request = page.request.put(f"{server.url}/api/jobs/{job.name}/marks/{stem}", data={"mark": "star"})
        assert request.ok
    page.wait_for_selector("text=2 starred", timeout=10_000)  # polled in, no reload

    with page.expect_download() as download:
        page.click("text=Export stars as job spec")
    spec = tmp_path / download.value.suggested_filename
    download.value.save_as(spec)
    result = farm("validate", str(spec))
    assert result.returncode == 0, result.stderr
    assert "tasks: 2 " in result.stdout and "combine: (cfg, seed)" in result.stdout

    response = page.request.get(f"{server.url}/api/jobs/{job.name}/stars.png")
    assert response.ok and response.headers["content-type"] == "image/png"
    assert len(read_grid_info(response.body())["cells"][0]) == 2


def test_images_arrive_live_while_the_job_renders(server, job, page, tmp_path):
    held = tmp_path / "held"
    held.mkdir()
    for record in sorted((job / "records").glob("*.json"))[:5]:  # not finished yet
        shutil.move(record, held / record.name)
    page.goto(f"{server.url}/#/job/{job.name}")
    page.wait_for_selector("text=3 / 8 images")
    assert page.locator(".missing").count() + page.locator(".cell").count() >= 1
    for record in held.iterdir():  # the worker finishes them
        shutil.move(record, job / "records" / record.name)
    page.wait_for_selector("text=8 / 8 images", timeout=10_000)
    assert page.locator(".cell").count() == 4 and page.locator(".missing").count() == 0


def test_static_export_browses_without_a_server_and_stars_are_read_only(job, page):
    records = [json.loads(p.read_text()) for p in (job / "records").glob("*.json")]
    stem = Path(next(r for r in records if r["seed"] == 1000)["image"]).stem  # seed 1000 shows first
    open_store(job.parent).write_text(f"{job.name}/review/marks/{stem}.json", '{"mark": "star"}')
    result = farm("review", "--export", str(job))
    assert result.returncode == 0, result.stderr
    assert (job / "review" / "index.html").is_file() and (job / "review" / "stars.yaml").is_file()
    assert farm("validate", str(job / "review" / "stars.yaml")).returncode == 0

    page.goto((job / "review" / "index.html").as_uri())
    page.wait_for_selector(".cell")
    assert "stars are read-only" in page.inner_text("#notice")
    sizes = image_widths(page)
    assert sizes and all(w == 64 for w in sizes), "the images load from the job folder"
    assert page.locator(".cell.star").count() == 1
    page.locator(".cell").first.click()
    assert page.locator("#zoom-star").is_disabled()

    bad = farm("review", "--export", "no-such-job", "--store", str(job.parent))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "no job no-such-job" in bad.stderr


def test_a_job_in_a_bucket_is_reviewed_the_same(rendered, s3_endpoint, page):
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="review")
    url = f"s3://review/farm?endpoint_url={s3_endpoint}"
    bucket = open_store(url)
    for path in rendered.rglob("*"):
        if path.is_file():
            bucket.write_bytes(f"{rendered.name}/{path.relative_to(rendered).as_posix()}", path.read_bytes())
    srv = ReviewServer(url)
    try:
        page.goto(f"{srv.url}/")
        page.get_by_role("link", name="demo").click()
        page.wait_for_selector(".cell")
        sizes = image_widths(page)
        assert sizes == [64, 64, 64, 64]
        page.locator(".cell").first.focus()
        page.keyboard.press("s")
        page.wait_for_selector(".cell.star")
        deadline = time.monotonic() + 5
        while not list(bucket.list_keys(f"{rendered.name}/review/marks/")) and time.monotonic() < deadline:
            time.sleep(0.1)
        (key,) = bucket.list_keys(f"{rendered.name}/review/marks/")
        assert json.loads(bucket.read_bytes(key))["mark"] == "star"
    finally:
        srv.stop()
