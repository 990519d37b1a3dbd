"""How fast each worker renders, for farms of mixed cards (a 4090 next to a 1070).

Each worker measures its own seconds per image per (checkpoint family, pixels, steps), as a moving
average, and announces the table with its heartbeat (and after every message). Three decisions
read it: the group size at publish (farm/dispatch.py: the live workers counted by speed, not by
head), how much of a message a worker keeps (a slow card keeps a small piece and hands the rest
back at once: worker/sharing.py), and backup renders of a slow card's tasks by an idle fast one
(worker/backups.py). Torch-free: the coordinator and the workers both import it.
"""

from __future__ import annotations

import json
import math

from farm.task import RenderTask

# Weight of the newest measurement in the moving average: a few messages follow a change (a game
# started on that PC, another memory mode), one odd batch does not swing the decisions.
SMOOTHING = 0.3


def speed_key(task: RenderTask, family: str) -> str:
    """What decides the seconds per image: the family's network, the pixels, the steps."""
    return f"{family}|{task.width * task.height}|{task.steps}"


class Speeds:
    """One worker's seconds per image by speed_key, each an exponential moving average."""

    def __init__(self, table: dict[str, float] | None = None):
        self.table: dict[str, float] = dict(table or {})

    def add(self, key: str, seconds_per_image: float) -> None:
        old = self.table.get(key)
        self.table[key] = seconds_per_image if old is None else old + SMOOTHING * (seconds_per_image - old)

    def get(self, key: str) -> float | None:
        return self.table.get(key)

    def to_json(self) -> str:
        return json.dumps({k: round(v, 4) for k, v in sorted(self.table.items())})

    @classmethod
    def from_worker(cls, info: dict) -> "Speeds":
        """A worker's announced table (its heartbeat hash); empty if it has none or it is garbled."""
        try:
            table = json.loads(info.get("speeds") or "{}")
            return cls({k: float(v) for k, v in table.items() if float(v) > 0})
        except (ValueError, TypeError, AttributeError):
            return cls()


def workers_by_speed(workers: list[dict], key: str) -> float:
    """The live workers counted by speed for renders of `key`: the fastest counts 1, one half as fast
    0.5; a worker that has not measured `key` counts as the fastest (as every worker did before
    speeds were measured). 0 when there are none."""
    seconds = [Speeds.from_worker(w).get(key) for w in workers]
    known = [s for s in seconds if s]
    if not known:
        return float(len(workers))
    fastest = min(known)
    return sum(fastest / s if s else 1.0 for s in seconds)


def keep_count(tasks: int, mine: float | None, fastest: float | None) -> int:
    """How many of a message's `tasks` a worker keeps: the share that takes it about as long as the
    whole message takes the fastest worker that could take it instead (at least one)."""
    if not mine or not fastest or mine <= fastest:
        return tasks
    return max(1, min(tasks, math.floor(tasks * fastest / mine + 1e-6)))
