"""Mixed cards (issue 17): real `farm worker` processes whose stand-in renderer (worker/standin.py)
runs at different speeds; speed-aware group sizes, handing unstarted work back to a faster idle
worker, backup renders of a slow worker's task, and what `farm status` counts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import farm
from farm.batching import group_size
from farm.dispatch import publish
from farm.expand import expand
from farm.ledger import Ledger
from farm.spec import parse_spec
from farm.speeds import Speeds, keep_count, workers_by_speed
from farm.store import open_store
from test_e2e_farm import wait_complete, wait_for


@pytest.fixture
def standin_models(tmp_path) -> Path:
    """A models folder with one checkpoint file the stand-in renderer never reads."""
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    (folder / "standin.safetensors").write_bytes(b"\0" * 16)
    return tmp_path / "models"


def spec_text(name: str, images: int) -> str:
    return f"name: {name}\nprompt: x\ncheckpoint: standin\nsize: 64x64\nsteps: 2\nseed: 1-{images}\n"


def submit(tmp_path: Path, name: str, images: int, broker: str, models: Path) -> tuple[str, str]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(spec_text(name, images))
    store_url = str(tmp_path / "renders")
    result = farm("submit", str(path), "--broker", broker, "--store", store_url, "--models", str(models))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip(), store_url


def manifest(store_url: str, job: str) -> list[dict]:
    return [json.loads(line) for line in open_store(store_url).read_text(f"{job}/manifest.jsonl").splitlines()]


def speeds_of(ledger: Ledger, name: str) -> dict:
    return next((Speeds.from_worker(w).table for w in ledger.workers() if w.get("name") == name), {})


def test_speeds_decide_the_pieces():
    fast, half, slow = ({"speeds": json.dumps({"k": s})} for s in (0.3, 0.6, 2.4))
    assert workers_by_speed([fast, half, slow], "k") == pytest.approx(1.625)
    assert workers_by_speed([fast, half, {}], "k") == pytest.approx(2.5)  # unmeasured: as the fastest
    assert workers_by_speed([fast, slow], "other") == 2
    assert group_size(24, 1.625) == 3 and group_size(24, 3) == 2
    assert [keep_count(8, s, 0.3) for s in (0.3, 0.6, 2.4, None)] == [8, 4, 1, 8]
    speeds = Speeds()
    speeds.add("k", 1.0)
    speeds.add("k", 2.0)
    assert 1.0 < speeds.get("k") < 2.0
    assert Speeds.from_worker({"speeds": "not json"}).table == {}


def test_publish_sizes_groups_by_the_live_workers_speeds(redis_server, standin_models):
    ledger = Ledger(redis_server.client())
    spec = parse_spec(spec_text("sizes", 24), models_dir=standin_models)
    tasks = list(expand(spec))
    key = f"{spec.family_of('standin')}|4096|2"

    def messages(speeds: tuple) -> int:
        r = redis_server.client()
        r.flushall()
        for i, s in enumerate(speeds):
            ledger.heartbeat(f"w{i}", {"name": f"w{i}", "speeds": json.dumps({key: s} if s else {})})
        publish(redis_server.url, tasks, "/store", task_count=24, family_of=spec.family_of)
        return sum(r.llen(q) for q in ledger.routes())

    assert messages((None, None)) == 8  # two unmeasured workers: 3 tasks per message
    assert messages((0.1, 0.8)) == 5  # one fast card and one 8x slower: 1.125 workers, 5 per message


def test_backups_on_mixed_speeds_lose_nothing_and_are_counted(redis_server, standin_models, start_worker, tmp_path):
    fast = start_worker(redis_server.url, standin_models, "fast", env={"FARM_STANDIN": "0,0.05"})
    slow = start_worker(redis_server.url, standin_models, "slow", env={"FARM_STANDIN": "0,3"})
    fast.wait_ready()
    slow.wait_ready()
    ledger = Ledger(redis_server.client())
    warmup, _ = submit(tmp_path, "warmup", 4, redis_server.url, standin_models)  # each measures its speed
    wait_complete(ledger, warmup, timeout=60)
    wait_for(lambda: speeds_of(ledger, "fast") and speeds_of(ledger, "slow"), 15, "both speeds announced")

    job, store_url = submit(tmp_path, "mixed", 16, redis_server.url, standin_models)
    wait_complete(ledger, job, timeout=60)
    # the slow card kept one task of its message; the fast one rendered a copy of it when idle
    assert "kept 1 of" in slow.text()
    assert "backup render of" in fast.text()
    wait_for(lambda: int(ledger.job_info(job).get("discarded", 0)) >= 1, 15, "the slow copy to be discarded")
    records = manifest(store_url, job)
    assert len(records) == 16 and len({(r["task_id"], r["seed"]) for r in records}) == 16
    assert len([k for k in open_store(store_url).list_keys(f"{job}/images/") if k.endswith(".png")]) == 16
    info = ledger.job_info(job)
    status = farm("status", job, "--broker", redis_server.url)
    assert status.returncode == 0, status.stderr
    assert f"backup renders {info['backups']}, discarded {info['discarded']}" in status.stdout
    assert int(info["backups"]) >= 1
    # every image is counted once for the worker that stored it; the discarded copy is not
    assert sum(w["images"] for w in ledger.status(job).workers.values()) == 16


def test_unstarted_tasks_go_back_to_a_faster_idle_worker(redis_server, standin_models, start_worker, tmp_path):
    # no measured speeds yet: the slow worker keeps its whole first message of 8 (4.8 s of work)
    slow = start_worker(redis_server.url, standin_models, "slow", env={"FARM_STANDIN": "0,0.6"},
                        args=("--no-backups",))
    fast = start_worker(redis_server.url, standin_models, "fast", env={"FARM_STANDIN": "0,0.02"},
                        args=("--no-backups",))
    slow.wait_ready()
    fast.wait_ready()
    ledger = Ledger(redis_server.client())
    job, store_url = submit(tmp_path, "handback", 64, redis_server.url, standin_models)
    wait_complete(ledger, job, timeout=60)
    handed = [int(n) for n in re.findall(r"handed (\d+) task\(s\) back to the queue", slow.text())]
    assert handed and all(n >= 1 for n in handed)
    records = manifest(store_url, job)
    assert len(records) == 64 and len({(r["task_id"], r["seed"]) for r in records}) == 64
    by_worker = {w: sum(r["worker"] == w for r in records) for w in ("slow", "fast")}
    assert by_worker["slow"] < 8  # it rendered fewer than the message it took
    # nothing rendered twice: every render was stored, no backup with --no-backups
    info = ledger.job_info(job)
    assert "backups" not in info and "discarded" not in info
    assert sum(w["images"] for w in ledger.status(job).workers.values()) == 64


@pytest.mark.parametrize("checkpoint, loads, load_seconds, copied", [
    ("a", 0, 0.0, True),  # the checkpoint loaded here: only the render counts
    ("b", 0, 0.0, False),  # another checkpoint, its load never measured here: no guess, no copy
    ("b", 1, 2.0, True),  # load + render (2.5 s) well before the slow card's 10 s
    ("b", 1, 20.0, False),  # a load longer than the wait
])
def test_the_backup_rule(checkpoint, loads, load_seconds, copied, redis_server, tmp_path):
    from types import SimpleNamespace

    from factories import make_task
    from farm.celery_app import make_app
    from worker.backups import Backups
    from worker.context import WorkerContext
    from worker.sharing import task_speed_key

    ledger = Ledger(redis_server.client())
    task = make_task(job="j", index=0, seed=1, prompt="p", checkpoint=checkpoint)
    key = task_speed_key(task, tmp_path)
    ledger.register_job("j", {"tasks": 1, "status": "running"})
    ledger.tasks_started("j", [task], "slow", "life-s", "/store", f"q.{checkpoint}")
    ledger.heartbeat("slow", {"name": "slow", "life": "life-s", "speeds": json.dumps({key: 10.0})})
    ctx = WorkerContext(models_dir=tmp_path, name="fast", loaded_checkpoint="a", loads=loads,
                        load_seconds=load_seconds)
    ctx.speeds.add(key, 0.5)
    steering = SimpleNamespace(order=["q.a"], serves={"q.a", "q.b"}, pause=None, work_waiting=None)
    try:
        Backups(make_app(redis_server.url), ledger, ctx, steering, "home").after_task()
    finally:
        ctx.writer.close()
    held = json.loads(redis_server.client().hget("farm:job:j:held", task.id))
    assert (held["worker"], redis_server.client().llen("home")) == (("fast", 1) if copied else ("slow", 0))
    if copied:  # a copy is never copied again
        assert held["backup"] is True
