"""Expanding a JobSpec into RenderTasks, lazily and deterministically.

A task index is a mixed-radix number: one digit per dimension of spec.dims (a zip group shares one
digit), the last dimension varying fastest. Decoding an index needs only the axis lengths and
indexing into each axis (a range or a small list), so task i is computed directly and a
million-task sweep is never held in memory (itertools.product would materialise its inputs).
Each parameter's row in farm/params.py turns the task's axis values into RenderTask fields.
"""

from __future__ import annotations

from collections.abc import Iterator

from farm.params import PARAMS
from farm.spec import JobSpec
from farm.task import RenderTask


def task_at(spec: JobSpec, index: int) -> RenderTask:
    """The task at one position of the job's expansion order."""
    count = spec.task_count()
    if not 0 <= index < count:
        raise IndexError(f"task index {index} is out of range: job {spec.job_id} has {count:,} tasks")
    return _task(spec, index)


def expand(spec: JobSpec, start: int = 0) -> Iterator[RenderTask]:
    """Every task from `start` on, in expansion order, one at a time."""
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    for index in range(start, spec.task_count()):
        yield _task(spec, index)


def _pick(spec: JobSpec, index: int) -> dict:
    """Axis -> value for a task index: mixed-radix digits, the last dimension fastest."""
    picked = {}
    rest = index
    for group in reversed(spec.dims):
        rest, digit = divmod(rest, len(spec.values[group[0]]))
        for axis in group:
            picked[axis] = spec.values[axis][digit]
    return picked


def _task(spec: JobSpec, index: int) -> RenderTask:
    v = _pick(spec, index)
    fields: dict = {}
    for param in PARAMS:
        if param.to_task:
            fields.update(param.to_task(v, spec))
    return RenderTask(
        job=spec.job_id,
        index=index,
        filename=spec.filename,
        axes={axis: v[axis] for axis in spec.swept_axes()},
        **fields,
    ).with_id()
