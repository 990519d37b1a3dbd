"""End to end, the distributed farm: a real redis-server, real `farm worker` processes, the real CLI,
a folder store and an S3 endpoint (moto's server on 127.0.0.1) reached through boto3."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from pathlib import Path

import boto3
import pytest

from conftest import farm
from farm.dispatch import publish
from farm.expand import expand
from farm.ledger import Ledger
from farm.spec import load_spec
from farm.store import open_store

SPEC_24 = """\
name: farm24
prompt: a lighthouse at dusk, oil painting
checkpoint: seedfarm-tiny
size: 64x64
steps: {steps}
sampler: Euler a
cfg: [5, 7]
seed: 1-12
grid: {{x: seed, y: cfg}}
"""


def write_spec(tmp_path: Path, steps: int = 2) -> Path:
    path = tmp_path / "farm24.yaml"
    path.write_text(SPEC_24.format(steps=steps))
    return path


def wait_for(condition, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def submit(spec: Path, broker: str, store: str, models: Path) -> str:
    result = farm("submit", str(spec), "--broker", broker, "--store", store, "--models", str(models))
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    assert "queued 24 tasks" in result.stderr
    return job


def wait_complete(ledger: Ledger, job: str, timeout: float = 120) -> None:
    wait_for(lambda: ledger.job_info(job).get("status") == "complete", timeout, f"job {job} to complete")


def check_complete_job(store_url: str, job: str, expected: int = 24) -> None:
    """Every image, exactly one manifest line each, and the contact sheets are in the store."""
    store = open_store(store_url)
    images = [k for k in store.list_keys(f"{job}/images/") if k.endswith(".png")]
    assert len(images) == expected
    lines = store.read_text(f"{job}/manifest.jsonl").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == expected
    assert len({(r["task_id"], r["seed"]) for r in records}) == expected
    assert sorted(f"{job}/{r['image']}" for r in records) == sorted(images)
    sheets = list(store.list_keys(f"{job}/sheets/"))
    assert sheets, "contact sheets were built"
    assert {r["worker"] for r in records} <= {"alpha", "beta", "early"}


def queued_tasks(r, ledger: Ledger) -> int:
    """Render tasks waiting in the route queues: each kombu message's body (base64 JSON) holds
    [args, kwargs, options], and args[0] is the message's group of tasks."""
    count = 0
    for queue in ledger.routes():
        for raw in r.lrange(queue, 0, -1):
            args = json.loads(base64.b64decode(json.loads(raw)["body"]))[0]
            count += len(args[0])
    return count


@pytest.fixture
def two_workers(redis_server, tiny_models, start_worker, request):
    # the S3 case's bucket is a store the workers must be told to trust (farm/guard.py)
    s3 = getattr(request.node, "callspec", None) and request.node.callspec.params.get("backend") == "s3"
    trusted = (f"s3://farm-e2e?endpoint_url={request.getfixturevalue('s3_endpoint')}",) if s3 else ()
    workers = [start_worker(redis_server.url, tiny_models, name, trusted=trusted) for name in ("alpha", "beta")]
    for w in workers:
        w.wait_ready()
    return workers


@pytest.mark.parametrize("backend", ["folder", "s3"])
def test_job_completes_on_two_workers(backend, redis_server, tiny_models, two_workers, tmp_path, request):
    if backend == "folder":
        store_url = str(tmp_path / "renders")
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="farm-e2e")
        store_url = f"s3://farm-e2e/renders?endpoint_url={endpoint}"
    job = submit(write_spec(tmp_path), redis_server.url, store_url, tiny_models)
    ledger = Ledger(redis_server.client())
    wait_complete(ledger, job)
    check_complete_job(store_url, job)

    status = farm("status", job, "--broker", redis_server.url)
    assert status.returncode == 0, status.stderr
    assert "complete" in status.stdout and "done 24" in status.stdout
    assert "contact sheet:" in status.stdout and "sheets/" in status.stdout
    listed = farm("jobs", "--broker", redis_server.url)
    assert job in listed.stdout and "complete" in listed.stdout
    # heartbeats come every 5 s: within that, both workers show the checkpoint they loaded
    wait_for(lambda: all(w.get("checkpoint") == "seedfarm-tiny" for w in ledger.workers()), 15, "heartbeats")
    live = farm("workers", "--broker", redis_server.url).stdout
    assert "alpha" in live and "beta" in live and "seedfarm-tiny" in live and "cpu" in live
    assert "batch auto" in live
    # both PCs took part
    records = [json.loads(x) for x in open_store(store_url).read_text(f"{job}/manifest.jsonl").splitlines()]
    assert {r["worker"] for r in records} == {"alpha", "beta"}


def test_worker_killed_mid_render_loses_nothing(redis_server, tiny_models, two_workers, tmp_path):
    alpha, beta = two_workers
    store_url = str(tmp_path / "renders")
    job = submit(write_spec(tmp_path, steps=12), redis_server.url, store_url, tiny_models)
    ledger = Ledger(redis_server.client())
    # SIGKILL alpha while it is rendering (a PC switched off): its task sits unacked in Redis.
    wait_for(lambda: "alpha" in ledger.status(job).running.values(), 60, "alpha to be rendering")
    alpha.proc.send_signal(signal.SIGKILL)
    alpha.proc.wait(10)
    wait_complete(ledger, job, timeout=180)
    check_complete_job(store_url, job)  # alpha's unacked task was handed to beta: all 24, no duplicates


def test_redis_flushed_mid_job_then_resume_requeues_exactly_the_missing(redis_server, tiny_models, two_workers,
                                                                         tmp_path):
    store_url = str(tmp_path / "renders")
    spec_path = write_spec(tmp_path, steps=8)
    job = submit(spec_path, redis_server.url, store_url, tiny_models)
    store = open_store(store_url)
    wait_for(lambda: len(list(store.list_keys(f"{job}/records/"))) >= 4, 60, "a few images to land")
    redis_server.client().flushall()
    # the tasks the workers were holding finish; then nothing moves: the queue is gone
    seen = []

    def settled() -> bool:
        seen.append(len(list(store.list_keys(f"{job}/records/"))))
        return len(seen) > 15 and len(set(seen[-15:])) == 1

    wait_for(settled, 60, "the workers to go idle")
    done_before = {k for k in store.list_keys(f"{job}/records/")}
    assert 0 < len(done_before) < 24

    result = farm("resume", job, "--broker", redis_server.url, "--store", store_url)
    assert result.returncode == 0, result.stderr
    done_now = len({k for k in store.list_keys(f"{job}/records/")})
    # every task is one image here: re-queued = missing from the store at the time of resume
    counts = result.stdout.strip().split(": ", 1)[1]
    already, requeued = int(counts.split()[0]), int(counts.split(", ")[1].split()[0])
    assert already + requeued == 24
    assert already >= len(done_before) and already <= done_now
    wait_complete(Ledger(redis_server.client()), job)
    check_complete_job(store_url, job)


def test_duplicate_delivery_of_a_finished_task_leaves_one_image(redis_server, tiny_models, two_workers, tmp_path):
    store_url = str(tmp_path / "renders")
    spec_path = write_spec(tmp_path)
    job = submit(spec_path, redis_server.url, store_url, tiny_models)
    ledger = Ledger(redis_server.client())
    wait_complete(ledger, job)
    store = open_store(store_url)
    mtimes = {k: os.stat(store.describe(k)).st_mtime_ns for k in store.list_keys(f"{job}/images/")}
    # deliver three finished tasks again, as a redelivery after a lost ack would
    tasks = list(expand(load_spec(spec_path, models_dir=tiny_models)))[:3]
    assert publish(redis_server.url, tasks, store.url) == 3
    alpha, beta = two_workers
    wait_for(lambda: (alpha.text() + beta.text()).count("'skipped': 1") >= 3, 60, "the duplicates to be consumed")
    check_complete_job(store_url, job)
    assert {k: os.stat(store.describe(k)).st_mtime_ns for k in store.list_keys(f"{job}/images/")} == mtimes
    assert ledger.job_info(job)["status"] == "complete"


def slow_job_on_one_worker(redis_server, tiny_models, start_worker, tmp_path, *worker_args: str):
    """One worker "alpha", then the 24-task job at 12 steps: (worker, job, ledger, store URL)."""
    store_url = str(tmp_path / "renders")
    worker = start_worker(redis_server.url, tiny_models, "alpha", args=worker_args)
    worker.wait_ready()
    job = submit(write_spec(tmp_path, steps=12), redis_server.url, store_url, tiny_models)
    return worker, job, Ledger(redis_server.client()), store_url


def test_ctrl_c_finishes_the_current_task_before_exiting(redis_server, tiny_models, start_worker, tmp_path):
    solo, job, ledger, store_url = slow_job_on_one_worker(redis_server, tiny_models, start_worker, tmp_path)
    task_id = wait_for(lambda: next(iter(ledger.status(job).running), None), 60, "a task to start")
    solo.proc.send_signal(signal.SIGINT)
    assert solo.proc.wait(60) == 0
    # the task it was rendering when Ctrl+C came is finished and recorded, not dropped
    records = [json.loads(open_store(store_url).read_bytes(k)) for k in open_store(store_url).list_keys(f"{job}/records/")]
    assert task_id in {r["task_id"] for r in records}
    assert task_id not in ledger.status(job).running
    assert ledger.status(job).done == len(records)


def test_ctrl_c_mid_group_hands_the_rest_of_the_group_back(redis_server, tiny_models, start_worker, tmp_path):
    # 4 groups of 6 tasks, one image per call
    solo, job, ledger, store_url = slow_job_on_one_worker(redis_server, tiny_models, start_worker, tmp_path,
                                                          "--max-batch", "1")
    wait_for(lambda: ledger.status(job).done >= 1, 60, "a first image")
    solo.proc.send_signal(signal.SIGINT)
    assert solo.proc.wait(60) == 0
    assert "handed" in solo.text() and "task(s) back to the queue" in solo.text()
    status = ledger.status(job)
    assert status.running == {} and status.done < 24
    # every task is done or waiting in a queue again: nothing is lost, nothing is held
    assert queued_tasks(redis_server.client(), ledger) + status.done == 24
    beta = start_worker(redis_server.url, tiny_models, "beta")
    wait_complete(ledger, job)
    check_complete_job(store_url, job)
    assert beta.proc.poll() is None


def test_cancel_stops_remaining_tasks(redis_server, tiny_models, start_worker, tmp_path):
    worker, job, ledger, store_url = slow_job_on_one_worker(redis_server, tiny_models, start_worker, tmp_path)
    wait_for(lambda: ledger.status(job).done >= 1, 60, "a first image")
    result = farm("cancel", job, "--broker", redis_server.url)
    assert result.returncode == 0, result.stderr
    # the job's 24 tasks travel in a few messages (farm/batching.py); the ones not started are dropped
    wait_for(lambda: worker.text().count("'cancelled': True") >= 2, 60, "queued tasks to be skipped")
    assert len(list(open_store(store_url).list_keys(f"{job}/images/"))) < 24
    assert ledger.job_info(job)["status"] == "cancelled"


def test_redis_unreachable_at_submit_is_one_line_and_writes_nothing(tmp_path, tiny_models):
    from conftest import free_port

    out = tmp_path / "renders"
    result = farm("submit", str(write_spec(tmp_path)), "--broker", f"redis://:secret@127.0.0.1:{free_port()}/0",
                  "--store", str(out), "--models", str(tiny_models))
    assert result.returncode == 1
    # a password in the URL earns a warning line (docs/security.md); the error is one line
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and "cannot reach Redis" in lines[0] and "secret" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("signals", [[signal.SIGINT] * 3, [signal.SIGQUIT]], ids=["ctrl-c x3", "sigquit"])
def test_impatient_shutdown_never_drops_the_task(signals, redis_server, tiny_models, two_workers, tmp_path):
    """Ctrl+C three times, or a cold shutdown (SIGQUIT): the worker exits without finishing; the
    task it was rendering is handed back (at once, or after the visibility timeout) and rendered
    by the other worker."""
    alpha, beta = two_workers
    store_url = str(tmp_path / "renders")
    job = submit(write_spec(tmp_path, steps=12), redis_server.url, store_url, tiny_models)
    ledger = Ledger(redis_server.client())
    wait_for(lambda: "alpha" in ledger.status(job).running.values(), 60, "alpha to be rendering")
    for sig in signals:
        alpha.proc.send_signal(sig)
        time.sleep(0.5)
    alpha.proc.wait(60)
    wait_complete(ledger, job, timeout=180)
    check_complete_job(store_url, job)


def test_a_worker_started_before_redis_waits_for_it(redis_binary, tiny_models, start_worker, tmp_path):
    from conftest import RedisServer, free_port

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    early = start_worker(url, tiny_models, "early")
    wait_for(lambda: "retrying in" in early.text(), 60, "the worker to say it waits for Redis")
    assert early.proc.poll() is None, early.text()
    server = RedisServer(redis_binary, tmp_path, port=port)
    try:
        early.wait_ready()
        store_url = str(tmp_path / "renders")
        job = submit(write_spec(tmp_path), url, store_url, tiny_models)
        wait_complete(Ledger(server.client()), job)
        check_complete_job(store_url, job)
    finally:
        early.stop()
        server.stop()


def test_the_reaper_requeues_only_tasks_held_by_worker_lives_that_ended(redis_server):
    from farm.celery_app import make_app
    from farm.messages import requeue_orphans
    from factories import make_task

    ledger = Ledger(redis_server.client())
    first, second = (make_task(job="reap", index=i, seed=i, prompt="p", checkpoint="c") for i in range(2))
    ledger.register_job("reap", {"tasks": 2, "status": "queued"})
    ledger.tasks_started("reap", [first], "alpha", "life-a", "/store", "q.reap")
    ledger.tasks_started("reap", [second], "beta", "life-b", "/store", "q.reap")
    ledger.heartbeat("alpha", {"name": "alpha", "life": "life-a2"})  # alpha restarted: a new life
    ledger.heartbeat("beta", {"name": "beta", "life": "life-b"})
    app = make_app(redis_server.url)
    assert requeue_orphans(app, ledger) == [f"reap/{first.id}"]
    r = redis_server.client()
    assert r.llen("q.reap") == 1 and first.id in r.lindex("q.reap", 0)
    assert ledger.status("reap").running == {second.id: "beta"}
    assert requeue_orphans(app, ledger) == []  # re-queued once, not on every sweep
    # a dead life's hold is not dropped once another worker took the task again
    ledger.tasks_started("reap", [second], "gamma", "life-g", "/store", "q.reap")
    assert not ledger.release_orphan("reap", second.id, "life-b")
    assert ledger.status("reap").running == {second.id: "gamma"}


def test_a_worker_switched_off_after_the_ack_but_before_storing_loses_nothing(redis_server, tiny_models,
                                                                                start_worker, tmp_path):
    spec = tmp_path / "one.yaml"
    spec.write_text(SPEC_24.format(steps=2).replace("cfg: [5, 7]", "cfg: 7").replace("seed: 1-12", "seed: 5")
                    .replace("grid: {x: seed, y: cfg}\n", ""))
    store_url = str(tmp_path / "renders")
    result = farm("submit", str(spec), "--broker", redis_server.url, "--store", store_url, "--models", str(tiny_models))
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    # The store cannot take images for now (where the images folder goes is a file): the writer
    # keeps retrying while the task's message is already acked.
    blocker = tmp_path / "renders" / job / "images"
    blocker.write_text("not a folder")
    alpha = start_worker(redis_server.url, tiny_models, "alpha")
    ledger = Ledger(redis_server.client())
    r = redis_server.client()
    wait_for(lambda: "storing an image failed" in alpha.text(), 90, "alpha to render and fail to store")
    queues = list(ledger.routes())
    wait_for(lambda: r.hlen("unacked") == 0 and not any(ledger.queue_lengths(queues).values()), 10, "the ack")
    assert list(ledger.status(job).running.values()) == ["alpha"]
    alpha.proc.send_signal(signal.SIGKILL)  # switched off: the broker has nothing to give back
    alpha.proc.wait(10)
    blocker.unlink()
    r.delete("farm:worker:alpha")  # what the heartbeat's expiry does 30 s later
    beta = start_worker(redis_server.url, tiny_models, "beta")
    wait_complete(ledger, job, timeout=120)
    assert "re-queued" in beta.text()
    records = [json.loads(line) for line in open_store(store_url).read_text(f"{job}/manifest.jsonl").splitlines()]
    assert [r["worker"] for r in records] == ["beta"]


def test_routes_unused_for_an_hour_and_empty_are_forgotten(redis_server):
    from farm.messages import Route

    ledger = Ledger(redis_server.client())
    r = redis_server.client()
    idle, busy, recent = (Route("normal", name, None, 4096, ()) for name in ("idle", "busy", "recent"))
    ledger.register_routes([idle, busy, recent])
    hour_ago = time.time() - 3700
    r.zadd("farm:routes-seen", {idle.queue: hour_ago, busy.queue: hour_ago})
    r.rpush(busy.queue, "a message")  # tasks still wait on it
    assert ledger.prune_routes() == [idle.queue]
    assert set(ledger.routes()) == {busy.queue, recent.queue}
    ledger.register_routes([idle])  # a new job on it brings it back
    assert idle.queue in ledger.routes()
