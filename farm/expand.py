"""Expanding a JobSpec into RenderTasks, lazily and deterministically.

A task index is a mixed-radix number: one digit per dimension of spec.dims (a zip group shares one
digit), the last dimension varying fastest. Decoding an index needs only the axis lengths and
indexing into each axis (a range or a small list), so task i is computed directly and a
million-task sweep is never held in memory (itertools.product would materialise its inputs).
"""

from __future__ import annotations

from collections.abc import Iterator

from farm.samplers import parse_sampler
from farm.spec import NO_MODEL, JobSpec
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
    prompt, negative = v["prompt"], v["negative_prompt"]
    search = spec.prompt_sr_search
    if search is not None:  # A1111's Prompt S/R replaces in both prompts
        prompt, negative = prompt.replace(search, v["prompt_sr"]), negative.replace(search, v["prompt_sr"])
    if v.get("lora", NO_MODEL) != NO_MODEL:  # the lora axis is a tag, as a user would write it
        prompt = f"{prompt} <lora:{v['lora']}:{v.get('lora_weight', 1.0):g}>"
    vae = "" if v.get("vae", NO_MODEL) == NO_MODEL else v["vae"]
    sampler, schedule = parse_sampler(v["sampler"], v["schedule"])
    if "size" in v:
        width, height = (int(x) for x in v["size"].split("x"))
    else:
        width, height = v["width"], v["height"]
    strength = float(v.get("variation_strength", 0.0))
    resize_w, resize_h = (int(x) for x in v.get("seed_resize_from", "0x0").split("x"))
    return RenderTask(
        job=spec.job_id,
        index=index,
        prompt=prompt,
        negative_prompt=negative,
        seed=v["seed"],
        batch_size=spec.batch_size,
        checkpoint=v["checkpoint"],
        checkpoint_hash=spec.checkpoint_hash(v["checkpoint"]),
        vae=vae,
        vae_hash=spec.vae_hash(vae) if vae else None,
        sampler=sampler,
        schedule=schedule,
        steps=v["steps"],
        cfg=float(v["cfg"]),
        width=width,
        height=height,
        clip_skip=v["clip_skip"],
        rng=v.get("rng", "cpu"),
        subseed=v.get("variation_seed") if strength else None,  # strength 0: same pixels, same id
        subseed_strength=strength,
        seed_resize_width=resize_w,
        seed_resize_height=resize_h,
        filename=spec.filename,
        axes={axis: v[axis] for axis in spec.swept_axes()},
    ).with_id()
