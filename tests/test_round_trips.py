"""Redis round trips of a worker's bookkeeping per message and per task (benchmarks/scaling.py
lost a point of efficiency at 8 workers when issue 17 added a few per task). The real render task
body runs in this process with the stand-in renderer, against a real Redis reached through a
client that counts what it sends: one send is one round trip (a pipeline or a Lua script is one)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import redis

from factories import make_task
from farm.ledger import Ledger

QUEUE = "farm.1.standin.4096.test"


class CountingConnection(redis.Connection):
    """Counts what is sent, except a new connection's handshake: the pool opens one more whenever
    the writer thread and the render thread happen to ask at the same moment (timing, not work)."""

    sent: list[str] = []  # the farm function that made each round trip, for the failure message
    connecting = False

    def on_connect_check_health(self, *args, **kwargs):
        self.connecting = True
        try:
            super().on_connect_check_health(*args, **kwargs)
        finally:
            self.connecting = False

    def send_packed_command(self, command, check_health=True):
        if self.connecting:
            return super().send_packed_command(command, check_health)
        frame = sys._getframe(1)
        while frame and ("/redis/" in frame.f_code.co_filename or "/celery/" in frame.f_code.co_filename):
            frame = frame.f_back
        CountingConnection.sent.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}" if frame else "?")
        return super().send_packed_command(command, check_health)


def test_a_message_costs_a_fixed_few_round_trips_plus_one_per_batch_and_task(redis_server, tmp_path, monkeypatch):
    from farm.celery_app import make_app
    from worker import tasks
    from worker.context import configure

    monkeypatch.setenv("FARM_STANDIN", "0,0")  # worker/standin.py: no diffusion, everything else real
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "Stable-diffusion" / "standin.safetensors").write_bytes(b"\0" * 16)
    client = redis.Redis(connection_pool=redis.ConnectionPool.from_url(
        redis_server.url, decode_responses=True, connection_class=CountingConnection))
    ledger = Ledger(client)
    ctx = configure(models, name="w0", max_batch=1)
    for name in ("w0", "w1"):  # this worker and a busy peer on the same queue, as mid-job
        ledger.heartbeat(name, {"name": name, "life": "l", "queues": json.dumps([QUEUE]), "busy": "1"})
    render = tasks.register(make_app(redis_server.url), ledger=ledger)
    store = str(tmp_path / "renders")

    def message(first: int, n: int) -> list[str]:
        group = [make_task(job="j", index=i, seed=i, checkpoint="standin") for i in range(first, first + n)]
        client.rpush(QUEUE, "more work")  # other messages still queued: no hand-back looks
        CountingConnection.sent.clear()
        result = render.apply(args=([t.model_dump() for t in group], store), routing_key=QUEUE).get()
        ctx.writer.flush()  # each task is reported from the writer thread
        assert result["images"] == n and result["handed_back"] == 0
        return list(CountingConnection.sent)

    try:
        ledger.register_job("j", {"tasks": 100, "status": "running"})
        message(0, 2)  # the first: the Lua scripts get loaded into Redis
        tasks_in_message = 6
        sent = message(10, tasks_in_message)
    finally:
        ctx.writer.close()
    # Per message: the job's state before and after, the workers (SCAN + one pipeline) for the
    # share this card keeps, the tasks taken, busy and idle: 7. Between diffusion batches: one
    # (cancelled? store refusing? queue empty?). Per task: one Lua call records it finished.
    assert len(sent) <= 7 + (tasks_in_message - 1) + tasks_in_message, Counter(sent)
