"""Sharing a message's tasks on a farm of mixed cards, so that the slowest PC never holds the end
of a job (farm/speeds.py has the speeds these decisions read).

- On taking a message, a worker keeps the share it renders in about the time the fastest worker
  that reads the same queue would take for the whole message, and hands the rest back to the
  queue at once: a slow card takes small pieces (`kept`).
- Between diffusion batches, it hands its unstarted tasks back when its queue is empty and another
  worker that reads the queue is idle and would finish one of them before this worker finishes
  them all (`hand_back_now`): the Ctrl+C path of worker/tasks.py, so nothing is lost or doubled.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from farm.checkpoints import resolve_checkpoint
from farm.families import UNKNOWN, file_family
from farm.speeds import Speeds, keep_count, speed_key
from farm.task import RenderTask


@lru_cache(maxsize=256)
def family_at(path: str) -> str:
    """The family of the checkpoint file at `path` (cached: asked after every diffusion batch)."""
    try:
        return file_family(Path(path), "checkpoint")
    except (ValueError, OSError):  # a broken file fails on load, with its own message
        return UNKNOWN


def task_speed_key(task: RenderTask, models_dir: Path) -> str:
    """The task's speed key, with its checkpoint's family read from the file header, as the
    coordinator reads it."""
    try:
        path = resolve_checkpoint(task.checkpoint, models_dir)
    except ValueError:
        return speed_key(task, UNKNOWN)
    return speed_key(task, family_at(str(path)))


def readers(workers: list[dict], me: str, queue: str) -> list[dict]:
    """The other live workers that read `queue` now (their announced queue order)."""
    found = []
    for w in workers:
        try:
            queues = json.loads(w.get("queues") or "[]")
        except ValueError:
            continue
        if w.get("name") != me and queue in queues:
            found.append(w)
    return found


def kept(tasks: int, key: str, ctx, ledger, queue: str) -> int:
    """How many of a message's tasks this worker keeps (see the module docstring)."""
    mine = ctx.speeds.get(key)
    theirs = [Speeds.from_worker(w).get(key) for w in readers(ledger.workers(), ctx.name, queue)]
    return keep_count(tasks, mine, min(filter(None, theirs), default=None))


def hand_back_now(ledger, ctx, queue: str, key: str, unstarted: int, waiting: int) -> bool:
    """True when this worker's `unstarted` images would be done sooner by an idle worker that reads
    the same queue (see the module docstring). `waiting`: the tasks on the queue now."""
    if unstarted <= 0 or not queue or waiting > 0:
        return False  # nothing to give, or idle workers have queued work to take first
    mine = ctx.speeds.get(key)
    for w in readers(ledger.workers(), ctx.name, queue):
        if w.get("busy") == "1" or w.get("paused"):
            continue
        theirs = Speeds.from_worker(w).get(key) or mine
        if mine is None or theirs < unstarted * mine:
            return True
    return False
