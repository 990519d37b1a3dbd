"""Backup renders for stragglers (MapReduce's backup tasks): when a worker has nothing left in the
queues it reads, it may render a copy of a task that a slower worker holds, if it would store the
image before that worker is expected to. The first image stored wins; the other copy is dropped by
the store's exactly-once rule (worker/render_loop.py: a record already there is never rewritten)
and counted as discarded in `farm status`.

The rule, per task another live worker holds (farm/ledger.py: when it took the task and its place
in that message), with this worker's and the holder's measured seconds per image for the task
(farm/speeds.py):

    holder expected to store it at  taken + (place + 1) x holder's seconds per image
    this worker would store it at   now + load + seconds per image (x its place in the backup)

and a copy is made only when the second is earlier. `load` is 0 for the checkpoint loaded here and
this worker's average load time for another one (never a guess: without a measured load, no
backup of another checkpoint). No copy of a copy, and an idle worker leaves a task to an idle one
that is faster. The copy travels as a message on this worker's own queue, and the worker takes over
the task's hold in the ledger (atomically, so no task gets two backups), which the reaper re-queues
if this worker stops. `farm worker --no-backups` turns it off.
"""

from __future__ import annotations

import logging
import time

from farm.batching import batch_key
from farm.messages import send
from farm.speeds import Speeds
from farm.task import RenderTask
from farm.tunables import MAX_GROUP
from worker.sharing import readers, task_speed_key

log = logging.getLogger("seedfarm.worker")


class Backups:
    def __init__(self, app, ledger, ctx, steering, home_queue: str):
        self.app, self.ledger, self.ctx, self.steering, self.home = app, ledger, ctx, steering, home_queue

    def after_task(self) -> None:
        """After every task (and the idle worker's wake-ups): back up what is worth it, if idle."""
        ctx, steering = self.ctx, self.steering
        if ctx.stopping or not steering.order or (steering.pause is not None and steering.pause.reason):
            return
        waiting = steering.work_waiting  # the steering looked just before (install below), or None
        if waiting or (waiting is None and any(self.ledger.queue_lengths(steering.order).values())):
            return  # work is waiting for this worker: it takes that next
        workers = {w.get("name"): w for w in self.ledger.workers()}
        now = time.time()
        chosen: list[RenderTask] = []
        first = None
        for job, task_id, held, expected, mine in self._candidates(workers, now):
            task = RenderTask.from_json(held["task"])
            if first and (held["store"] != first[1]["store"] or batch_key(task) != batch_key(first[0])):
                continue  # one message: one job, one store, one diffusion run
            load = self._load_seconds(task)
            if load is None or now + load + (len(chosen) + 1) * mine >= expected:
                continue
            copy = {**held, "worker": ctx.name, "life": ctx.life, "taken": now + load, "place": len(chosen),
                    "backup": True}
            if self.ledger.take_over(job, task_id, held["life"], copy):
                chosen.append(task)
                first = first or (task, held)
                if len(chosen) == MAX_GROUP:
                    break
        if chosen:
            send(self.app, chosen, first[1]["store"], self.home)
            log.info("backup render of %d task(s) held by %s", len(chosen), first[1]["worker"])

    def _candidates(self, workers: dict[str, dict], now: float):
        """(job, task id, held, holder's expected store time, this worker's seconds per image) of
        tasks a slower live worker holds, latest expected first."""
        ctx = self.ctx
        found = []
        for job, task_id, held in self.ledger.held_tasks():
            holder = workers.get(held.get("worker"))
            if (held.get("backup") or held.get("worker") == ctx.name or holder is None
                    or holder.get("life") != held.get("life")  # a dead worker's task: the reaper's
                    or held.get("queue") not in self.steering.serves):
                continue
            task = RenderTask.from_json(held["task"])
            key = task_speed_key(task, ctx.models_dir)
            mine, theirs = ctx.speeds.get(key), Speeds.from_worker(holder).get(key)
            if not mine or not theirs or theirs <= mine or self._faster_idle_peer(workers, held["queue"], key, mine):
                continue
            found.append((job, task_id, held, float(held["taken"]) + (int(held["place"]) + 1) * theirs, mine))
        return sorted(found, key=lambda c: -c[3])

    def _faster_idle_peer(self, workers: dict[str, dict], queue: str, key: str, mine: float) -> bool:
        """An idle worker that reads the queue and renders faster (ties: the first name) backs it up."""
        for w in readers(list(workers.values()), self.ctx.name, queue):
            theirs = Speeds.from_worker(w).get(key)
            if w.get("busy") != "1" and not w.get("paused") and theirs and (
                    theirs < mine or (theirs == mine and w.get("name", "") < self.ctx.name)):
                return True
        return False

    def _load_seconds(self, task: RenderTask) -> float | None:
        ctx = self.ctx
        if task.checkpoint == ctx.loaded_checkpoint:
            return 0.0
        return ctx.load_seconds / ctx.loads if ctx.loads else None


def install(signals, backups: Backups) -> None:
    """Look after every task, once the queue order is fresh (worker/steering.py looks first)."""

    def after_task(**_kw) -> None:
        try:
            backups.after_task()
        except Exception as e:  # Redis away for a moment: no backup this time
            log.warning("could not look for backup renders: %s", e)

    signals.task_postrun.connect(after_task, weak=False)
