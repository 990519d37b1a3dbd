"""End to end: model affinity, capability routing and job priority with real workers and Redis."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import farm
from farm.ledger import Ledger
from farm.store import open_store
from test_e2e_farm import wait_for


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> Path:
    """A models folder with two checkpoints, 'tinyA' and 'tinyB'."""
    from worker.tiny import make_tiny

    models = tmp_path_factory.mktemp("models2")
    make_tiny(models, "tinyA")
    make_tiny(models, "tinyB")
    return models


def spec(tmp_path: Path, name: str, extra: str = "", seeds: str = "1-6", combine: str = "", steps: int = 2,
         size: str = "64x64") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nprompt: a red fox\ncheckpoint: [tinyA, tinyB]\nsize: {size}\nsteps: {steps}\n"
        f"sampler: Euler\nseed: {seeds}\n{combine}{extra}"
    )
    return path


def submit(path: Path, broker: str, store: str, models: Path) -> str:
    result = farm("submit", str(path), "--broker", broker, "--store", store, "--models", str(models))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def records(store_url: str, job: str) -> list[dict]:
    return [json.loads(line) for line in open_store(store_url).read_text(f"{job}/manifest.jsonl").splitlines()]


def test_affinity_loads_each_checkpoint_once_even_when_tasks_alternate(redis_server, two_checkpoints,
                                                                        start_worker, tmp_path):
    worker = start_worker(redis_server.url, two_checkpoints, "solo")
    worker.wait_ready()
    store = str(tmp_path / "out")
    # checkpoint is the innermost axis: in queue order the tasks alternate A, B, A, B ...
    job = submit(spec(tmp_path, "alternate", combine="combine: seed * checkpoint\n"), redis_server.url, store,
                 two_checkpoints)
    ledger = Ledger(redis_server.client())
    wait_for(lambda: ledger.job_info(job).get("status") == "complete", 120, "the job")
    assert len(records(store, job)) == 12
    loads = ledger.status(job).workers["solo"]["loads"]
    assert loads == 2, f"a plain FIFO worker would load 12 times; this one loaded {loads}"
    shown = farm("status", job, "--broker", redis_server.url).stdout
    assert "loads" in shown


def test_tasks_go_only_to_workers_that_can_render_them(redis_server, two_checkpoints, start_worker, tmp_path):
    only_a = tmp_path / "only-a" / "Stable-diffusion"
    only_a.mkdir(parents=True)
    shutil.copy(two_checkpoints / "Stable-diffusion" / "tinyA.safetensors", only_a)
    shutil.copytree(two_checkpoints / "Stable-diffusion" / "tinyA.config", only_a / "tinyA.config")
    # 'small' has only tinyA and renders at most 64x64; 'big' has both and offers the tag gpu-big
    small = start_worker(redis_server.url, only_a.parent, "small", args=("--max-pixels", str(64 * 64)))
    big = start_worker(redis_server.url, two_checkpoints, "big", args=("--tags", "gpu-big"))
    small.wait_ready()
    big.wait_ready()
    store = str(tmp_path / "out")
    mixed = submit(spec(tmp_path, "mixed", size="[64x64, 64x128]", seeds="1-3"), redis_server.url, store,
                   two_checkpoints)
    tagged = submit(spec(tmp_path, "tagged", extra="requires: [gpu-big]\n", seeds="1-2"), redis_server.url, store,
                    two_checkpoints)
    ledger = Ledger(redis_server.client())
    for job in (mixed, tagged):
        wait_for(lambda: ledger.job_info(job).get("status") == "complete", 120, f"job {job}")
    assert len(records(store, mixed)) == 12 and len(records(store, tagged)) == 4
    for r in records(store, mixed):
        if r["task"]["checkpoint"] == "tinyB" or r["task"]["height"] > 64:
            assert r["worker"] == "big", f"{r['image']} went to a worker that cannot render it"
    assert {r["worker"] for r in records(store, tagged)} == {"big"}


def test_high_priority_job_overtakes_a_low_priority_one(redis_server, two_checkpoints, start_worker, tmp_path):
    worker = start_worker(redis_server.url, two_checkpoints, "solo")
    worker.wait_ready()
    store = str(tmp_path / "out")
    low = submit(spec(tmp_path, "low", extra="priority: low\n", seeds="1-15", steps=8),
                 redis_server.url, store, two_checkpoints)
    ledger = Ledger(redis_server.client())
    wait_for(lambda: ledger.status(low).done >= 1, 60, "the low-priority job to start")
    high = submit(spec(tmp_path, "high", extra="priority: high\n", seeds="1-2"), redis_server.url, store,
                  two_checkpoints)
    wait_for(lambda: ledger.job_info(high).get("status") == "complete", 120, "the high-priority job")
    low_status = ledger.status(low)
    assert low_status.done < low_status.tasks, "the high-priority job waited for the low one"
    wait_for(lambda: ledger.job_info(low).get("status") == "complete", 120, "the low-priority job")
