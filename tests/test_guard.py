"""The worker survives any message (farm/guard.py, farm/transport.py): what the guard refuses and
why, property tests over arbitrary bytes and mutated envelopes, the trusted-store rule, and a real
worker that dead-letters rogue messages in the middle of a job and finishes it."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm.celery_app import make_app
from farm.guard import DEAD_LETTERS, Policy, dead_letter, dead_letters, inspect_message
from farm.ledger import Ledger
from farm.messages import send, worker_queue
from farm.store.urls import store_trusted
from farm.task import RenderTask
from tests.conftest import farm
from tests.factories import make_task

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def real_message(redis_server, tasks=None, store="/srv/farm") -> bytes:
    """The raw bytes `farm submit` puts on a queue, read back from a real Redis."""
    app = make_app(redis_server.url)
    send(app, tasks or [make_task(), make_task(seed=8).with_id()], store, "farm.q")
    return redis_server.client().lindex("farm.q", 0).encode()


def envelope_with(raw: bytes, body=None, **changes) -> bytes:
    env = json.loads(raw)
    if body is not None:
        env["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    env.update(changes)
    return json.dumps(env).encode()


def test_a_real_message_passes_and_each_kind_of_hostile_one_is_refused_in_one_line(redis_server):
    raw = real_message(redis_server)
    assert inspect_message(raw) is None
    body = json.loads(base64.b64decode(json.loads(raw)["body"]))
    task = body[0][0][0]
    cases = {
        b"not json {{{": "not JSON",
        b"[1,2,3]": "not a JSON object",
        b'{"foo":1}': "no 'properties'",
        envelope_with(raw, body="x") .replace(b'"body": "', b'"body": "!!not base64'): "not valid base64",
        b"[" * 100_000: "nested too deeply",
        envelope_with(raw, headers={**json.loads(raw)["headers"], "task": "celery.chord_unlock"}): "unknown task",
        envelope_with(raw, body=[[[{**task, "v": 99}], "/srv/farm"], {}, {}]): "task schema version 99",
        envelope_with(raw, body=[[[{**task, "steps": "many"}], "/srv/farm"], {}, {}]): "invalid task: steps",
        envelope_with(raw, body=[[[{**task, "seed": 9}], "/srv/farm"], {}, {}]): "does not match its content",
        envelope_with(raw, body=[[[task] * 9, "/srv/farm"], {}, {}]): "1 to 8 tasks",
        envelope_with(raw, body=[[[task], "/srv/farm"], {"x": 1}, {}]): "exactly [tasks, store]",
        envelope_with(raw, **{"content-type": "application/x-python-serialize"}): "content type",
        b" " * 1_000_001: "over the limit of 1000000 bytes",
    }
    for message, reason in cases.items():
        got = inspect_message(message)
        assert got is not None and reason in got, (message[:80], got)
        assert "\n" not in got
    # the store a message names must be one the worker trusts
    policy = Policy(trusted_store=lambda url: store_trusted(url, ["/srv/farm"]))
    assert inspect_message(raw, policy) is None
    assert "not one this worker trusts" in inspect_message(real_message(redis_server, store="/tmp/elsewhere"),
                                                           policy)
    # the limit is a setting
    assert "over the limit" in inspect_message(raw, Policy(max_bytes=len(raw) - 1))


def test_trusted_stores_are_the_folders_and_buckets_given_and_what_is_inside_them(tmp_path):
    farm_dir = tmp_path / "farm"
    trusted = [str(farm_dir), "s3://renders/team?endpoint_url=http://nas:9000"]
    assert store_trusted(str(farm_dir), trusted)
    assert store_trusted(str(farm_dir / "job1"), trusted)
    assert store_trusted((farm_dir / "x").as_uri(), trusted)
    assert not store_trusted(str(farm_dir / ".." / "other"), trusted)
    assert not store_trusted(str(tmp_path / "farm-evil"), trusted)
    assert not store_trusted("/etc", trusted)
    assert store_trusted("s3://renders/team/more?endpoint_url=http://nas:9000", trusted)
    assert not store_trusted("s3://renders/team", trusted)  # another endpoint: AWS itself
    assert not store_trusted("s3://renders/team?endpoint_url=http://evil:9000", trusted)
    assert not store_trusted("s3://other/team?endpoint_url=http://nas:9000", trusted)
    assert not store_trusted("gopher://x", trusted)
    assert not store_trusted("/tmp/\x00nul", trusted)


@PROPERTY
@given(st.binary(max_size=4000))
def test_any_bytes_are_either_accepted_or_refused_never_raised(data):
    reason = inspect_message(data)
    assert reason is None or (isinstance(reason, str) and "\n" not in reason)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20)


@PROPERTY
@given(field=st.sampled_from(["job", "index", "prompt", "seed", "steps", "width", "cfg", "v", "id", "axes", "rng"]),
       value=JSON, where=st.sampled_from(["task", "store", "args", "kwargs", "headers", "properties"]))
def test_a_real_message_with_any_part_replaced_is_decided_without_raising(shared_raw, field, value, where):
    env = json.loads(shared_raw)
    body = json.loads(base64.b64decode(env["body"]))
    if where == "task":
        body[0][0][0][field] = value
    elif where == "store":
        body[0][1] = value
    elif where == "args":
        body[0] = value
    elif where == "kwargs":
        body[1] = value
    else:
        env[where] = value if field == "v" else {**env[where], field: value}
    env["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    reason = inspect_message(json.dumps(env))
    assert reason is None or isinstance(reason, str)


@pytest.fixture(scope="module")
def shared_raw() -> str:
    """A real message's bytes, built once per module without a server (the envelope kombu writes)."""
    task = make_task()
    body = base64.b64encode(json.dumps([[[task.model_dump()], "/srv/farm"], {}, {}]).encode()).decode()
    return json.dumps({
        "body": body, "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"lang": "py", "task": "seedfarm.render", "id": f"test:{task.id}"},
        "properties": {"correlation_id": "x", "delivery_info": {"exchange": "", "routing_key": "q"},
                       "body_encoding": "base64", "delivery_tag": "t"},
    })


def test_dead_letters_keep_the_head_the_queue_and_why(redis_server):
    r = redis_server.client()
    dead_letter(r, "farm.1.x", "message is not JSON (JSONDecodeError)", b"x" * 50_000)
    [entry] = dead_letters(r)
    assert entry["queue"] == "farm.1.x" and entry["bytes"] == 50_000 and len(entry["head"]) == 2000
    assert r.llen(DEAD_LETTERS) == 1


def test_a_worker_dead_letters_rogue_messages_mid_job_and_finishes_the_job(redis_server, tiny_models, start_worker,
                                                                           tmp_path):
    """The issue's reproductions, against a real worker: each was an 'Unrecoverable error'."""
    r = redis_server.client()
    good = real_message(redis_server, [make_task(job="rogue")], store=str(tmp_path / "renders"))
    r.delete("farm.q")
    home = worker_queue("alpha")
    rogue = [b"not json {{{", b"[1,2,3]", b'{"foo":1}',
             envelope_with(good).replace(b'"body": "', b'"body": "%%%'),
             b"x" * 1_100_000,
             real_message(redis_server, [make_task(job="rogue")], store=str(tmp_path.parent / "elsewhere"))]
    r.delete("farm.q")
    for raw in rogue[:3]:  # before the worker starts: on the queue it reads first
        r.lpush(home, raw)
    worker = start_worker(redis_server.url, tiny_models, "alpha")
    worker.wait_ready()
    spec = tmp_path / "four.yaml"
    spec.write_text("name: four\ncheckpoint: seedfarm-tiny\nprompt: a robot\nsteps: 2\nwidth: 64\nheight: 64\n"
                    "sampler: Euler\nseed: 1-4\n")
    store = str(tmp_path / "renders")
    result = farm("submit", str(spec), "--broker", redis_server.url, "--store", store, "--models", str(tiny_models))
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    for raw in rogue[3:]:  # in the middle of the job, on its own route queue
        queue = next(iter(Ledger(r).routes()))
        r.lpush(queue, raw)
    # remote control: broadcasts that are not messages, and a well-formed `shutdown` (refused: the
    # worker answers only ping)
    for raw in ("not json {{{", "[1,2,3]", '{"foo":1}'):
        r.publish("/0.celery.pidbox", raw)
    make_app(redis_server.url).control.shutdown()
    ledger = Ledger(r)
    deadline = time.monotonic() + 120
    while ledger.job_info(job).get("status") != "complete":
        assert worker.proc.poll() is None, worker.text()
        assert time.monotonic() < deadline, worker.text()
        time.sleep(0.3)
    while r.llen(DEAD_LETTERS) < len(rogue) and time.monotonic() < deadline:
        time.sleep(0.3)
    reasons = [d["reason"] for d in dead_letters(r)]
    assert len(reasons) == len(rogue), reasons
    assert any("over the limit" in x for x in reasons) and any("not one this worker trusts" in x for x in reasons)
    assert worker.proc.poll() is None  # still serving
    log = worker.text()
    assert log.count("dead letter from queue") == len(rogue) and "Unrecoverable" not in log
    assert "dropped a broadcast" in log and "shutdown" not in log.lower().replace("worker_shutting", "")
    assert len([k for k in Path(store, job, "images").iterdir()]) == 4
    assert not (tmp_path.parent / "elsewhere").exists()
    listed = farm("jobs", "--broker", redis_server.url)
    assert f"{len(rogue)} dead letter(s)" in listed.stdout
    shown = farm("dead-letters", "--broker", redis_server.url, "--clear")
    assert shown.returncode == 0 and "not JSON" in shown.stdout and r.llen(DEAD_LETTERS) == 0
