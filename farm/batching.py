"""Batching across tasks: which tasks may share one diffusion call, and grouping them into messages.

Tasks that differ only in seed, prompt, variation seed or output name (same checkpoint, size,
sampler, steps, CFG, clip skip, VAE, LoRAs...: the fields farm/params.py marks in_batch_key) can
render as one batch. The coordinator puts runs of such consecutive tasks into one queue message (a
group); the worker that takes it renders the group's images in diffusion batches of up to its own
max batch (worker/render_loop.py). Groups stay small enough that a job still spreads over every
live worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import lru_cache

from farm.params import BATCH_FIELDS
from farm.prompts import extract_extra_networks
from farm.task import RenderTask
from farm.tunables import MAX_GROUP, MESSAGES_PER_WORKER, WORKERS_WHEN_NONE_LIVE


def batch_key(task: RenderTask) -> tuple:
    """Tasks with equal keys can render in one diffusion call (the images stay as if rendered
    alone: batch invariance). The prompt's extra-network tags are in the key, because LoRAs are
    applied to the model, not to one image; the rest of the prompt is not."""
    return (task.job, *(_hashable(getattr(task, field)) for field in BATCH_FIELDS), _networks(task.prompt))


def _hashable(value):
    """A dict field (a model's parts by role) as a sorted tuple, so the key can be a set member."""
    return tuple(sorted(value.items())) if isinstance(value, dict) else value


@lru_cache(maxsize=4096)  # a sweep repeats few prompts many times; keeps enqueueing fast
def _networks(prompt: str) -> tuple:
    return tuple((n.kind, n.args, n.named) for n in extract_extra_networks(prompt)[1])


def group_size(task_count: int, workers: float, max_group: int = MAX_GROUP) -> int:
    """Tasks per message for a job of task_count tasks on a farm of `workers` live workers (counted
    by speed on a farm of mixed cards: farm/speeds.py): as large as max_group while the job still
    makes MESSAGES_PER_WORKER messages per worker."""
    workers = workers or WORKERS_WHEN_NONE_LIVE
    return max(1, min(max_group, int(task_count // (MESSAGES_PER_WORKER * workers))))


def group_tasks(tasks: Iterable[RenderTask], size: int) -> Iterator[list[RenderTask]]:
    """Runs of consecutive tasks with equal batch keys, at most `size` per group (streaming)."""
    group: list[RenderTask] = []
    key = None
    for task in tasks:
        task_key = batch_key(task) if size > 1 else None
        if group and (len(group) >= size or task_key != key):
            yield group
            group = []
        group.append(task)
        key = task_key
    if group:
        yield group
