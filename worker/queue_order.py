"""The order in which a worker reads the queues (farm/messages.py names them by priority,
checkpoint, size and tags): which worker renders which task.

Loading a checkpoint costs 5-30 s on a gaming PC, rendering an image 1-20 s, so a farm is fast only
if each worker keeps rendering the checkpoint it has loaded. Tasks are published to one queue per
route: priority, checkpoint, pixels per render and required tags. Each worker reads only the
queues it can serve (it has the checkpoint, the render fits its memory, it has the tags), in an
order it recomputes after every task:

  1. higher job priority first;
  2. within a priority, the checkpoint it has loaded first (affinity);
  3. then the others by pending work per worker already on them, so that when its checkpoint runs
     out it moves to the checkpoint with the most pending work that is least served, and idle
     workers spread over checkpoints instead of all switching to the same one;
  4. a checkpoint other workers are already on is left to them when its remaining work, shared,
     would take less time than loading it here;
  5. a checkpoint this worker lacks but can fetch from the model depot (worker/model_cache.py)
     comes after every checkpoint it has, and is left to the live workers that hold it unless
     there are none, or their share of its queue (pending / holders x seconds per image) would
     take longer than fetching it here (size / measured MB/s) plus loading it.

Redis' BRPOP takes from the first non-empty queue in that order (kombu's "priority" queue order).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from farm.messages import PRIORITIES, Route
from farm.tunables import ASSUMED_RENDER_SECONDS
from farm.vram import Footprint, Memory


@dataclass
class Capabilities:
    """What a worker offers: the checkpoints it has (name -> sha256, or None when not hashed yet),
    the most pixels it renders at once per checkpoint (a card fits fewer SDXL pixels than SD1.5
    pixels; a checkpoint without an entry has no limit), and free-form tags ('fast', 'sdxl'...).
    For families built from parts: `footprints`, (checkpoint, route.parts) -> what its render holds
    here (farm/vram.py), or why it cannot render here (a part it lacks); `memory`, the card and
    mode they are weighed against (None: no limit, a CPU worker)."""

    checkpoints: dict[str, str | None]
    max_pixels: dict[str, int] = field(default_factory=dict)
    tags: frozenset[str] = field(default_factory=frozenset)
    footprints: dict[tuple[str, tuple], Footprint | str] = field(default_factory=dict)
    memory: Memory | None = None
    # checkpoints not here that the depot has: name -> estimated seconds to fetch them
    fetchable: dict[str, float] = field(default_factory=dict)

    def why_not(self, route: Route) -> str | None:
        """None if this worker can render the route, else the reason."""
        # a route without a checkpoint (the upscale kind) loads none: any worker with its tags serves it
        if route.checkpoint and route.checkpoint not in self.checkpoints and route.checkpoint not in self.fetchable:
            return f"no checkpoint '{route.checkpoint}' here"
        have = self.checkpoints.get(route.checkpoint)
        if route.checkpoint_hash and have and have != route.checkpoint_hash:
            return f"checkpoint '{route.checkpoint}' here has other weights"
        fp = self.footprints.get((route.checkpoint, route.parts))
        if isinstance(fp, str):
            return fp
        if fp is not None and self.memory is not None:
            reason = self.memory.why_not(fp, route.pixels, f"'{route.checkpoint}'")
            if reason:
                return reason
        limit = self.max_pixels.get(route.checkpoint)
        if limit is not None and route.pixels > limit:
            return f"{route.pixels} pixels per render exceed this worker's {limit} for '{route.checkpoint}'"
        missing = set(route.tags) - self.tags
        if missing:
            return f"lacks tag(s) {', '.join(sorted(missing))}"
        return None


def queue_order(routes: dict[str, Route], pending: dict[str, int], loaded: str | None,
                others_on: dict[str, int], worker: str = "", render_seconds: float = 0.0,
                load_seconds: float = 0.0, served: dict[str, int] | None = None,
                fetch_seconds: dict[str, float] | None = None, holders: dict[str, int] | None = None,
                loaded_refiner: str = "") -> list[str]:
    """The queues a worker should read, best first (see the module docstring).
    `pending`: queue -> tasks waiting; `others_on`: checkpoint -> other workers loaded with it or
    heading to it; `served`: queue -> other workers reading that very queue with its checkpoint
    loaded (only they can take its work off this worker's hands). Empty queues go last; they cost
    nothing to listen to. Ties are broken by a hash of the worker's name, so workers that start
    at the same moment, all seeing the same counts, still prefer different checkpoints.
    `loaded_refiner`: the SDXL refiner held with the loaded checkpoint ("" none): of the queues of
    that checkpoint, those with the same refiner (or none) come first, no reload needed."""

    fetch = fetch_seconds or {}  # checkpoints this worker would have to fetch first

    def key(queue: str):
        route = routes[queue]
        waiting = pending.get(queue, 0)
        share = waiting / (1 + others_on.get(route.checkpoint, 0))
        tiebreak = hashlib.sha1(f"{worker}/{route.checkpoint}".encode()).hexdigest()
        other_refiner = dict(route.parts).get("refiner", "") != loaded_refiner
        return (PRIORITIES[route.priority], route.checkpoint in fetch, route.checkpoint != loaded,
                other_refiner and route.checkpoint == loaded, waiting == 0, -share, tiebreak, queue)

    def worth_joining(queue: str) -> bool:
        """Not worth it: loading a checkpoint that other workers are already on, to share work
        that takes them less time than the load itself (this worker's own averages)."""
        route = routes[queue]
        if route.checkpoint in fetch:
            held_by = (holders or {}).get(route.checkpoint, 0)
            per_image = render_seconds or ASSUMED_RENDER_SECONDS
            return not held_by or pending.get(queue, 0) / held_by * per_image > fetch[route.checkpoint] + load_seconds
        helpers = (served or {}).get(queue, 0)
        if route.checkpoint == loaded or helpers == 0 or not load_seconds:
            return True
        return pending.get(queue, 0) / (1 + helpers) * render_seconds > load_seconds

    return sorted((q for q in routes if worth_joining(q)), key=key)


def next_checkpoint(order: list[str], routes: dict[str, Route], pending: dict[str, int],
                    loaded: str | None) -> str | None:
    """The checkpoint this worker would switch to when its own runs out (announced to the others
    so they do not all pick the same one)."""
    for queue in order:
        route = routes[queue]
        if route.checkpoint != loaded and pending.get(queue, 0) > 0:
            return route.checkpoint
    return None
