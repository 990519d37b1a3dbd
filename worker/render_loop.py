"""The render loop: a group of tasks (farm/batching.py) in diffusion batches of the worker's max
batch, each batch's images handed to the writer thread (worker/writer.py), which stores them
while the next batch renders.

A task is idempotent: its images are named by task id and seed, and a task whose records are all in
the store is skipped, so a redelivery after a crash never renders or records an image twice.

The loop knows no model family and no task kind: the renderer (ctx.task_models: worker.prepare's
TaskModels, or the benchmarks' worker.standin.StandinModels) loads, batches, prepares and renders,
and the task's kind (worker/kinds/) says how its images are made.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from farm.batching import batch_key
from farm.infotext import format_infotext, png_bytes, task_parameters
from farm.models import Registry
from farm.speeds import speed_key
from farm.store import Store, image_record, is_done, record_key, save_image
from farm.task import RenderTask
from worker.context import TaskError, WorkerContext, model_files
from worker.sharing import family_at
from worker.writer import Batch

log = logging.getLogger("seedfarm.worker")


@dataclass
class _Progress:
    """A task whose images are being rendered and stored; reported once, from the writer thread."""

    task: RenderTask
    remaining: int  # images not stored yet
    seconds: float = 0.0  # render time of its images
    load_seconds: float = 0.0
    rendered: int = 0  # images handed to the writer (counted on the render thread)
    discarded: int = 0  # images not stored: another copy's were first (a backup render, worker/backups.py)
    failed: bool = False
    reported: bool = False


Finished = Callable[[RenderTask, dict, "str | None"], None]  # (task, summary, failure reason)


def render_tasks(tasks: list[RenderTask], store: Store, ctx: WorkerContext, finished: Finished,
                 stop: Callable[[], bool] = lambda: False) -> tuple[dict, list[RenderTask]]:
    """Render a group of tasks (farm/batching.py) that are not in the store yet, in diffusion
    batches of up to the worker's max batch. Each batch's images go to ctx.writer, which stores
    them while the next batch renders and calls finished(task, summary, None) once all of a task's
    images are stored. A task that cannot render here (TaskError) is reported with its reason and
    the others go on; any other error propagates (the caller retries). `stop` is asked between
    diffusion batches (a cancelled job, a worker shutting down). Returns counts for the log, and the
    tasks left unrendered because of a stop."""
    todo = []
    for task in tasks:
        if is_done(store, task):
            finished(task, {"task_id": task.id, "images": 0, "skipped": True}, None)
        else:
            todo.append(task)
    progress: list[_Progress] = []
    for run in _runs(todo):
        run_progress = [_Progress(task, task.batch_size) for task in run]
        progress += run_progress
        try:
            _render_run(run_progress, store, ctx, finished, stop)
        except TaskError as e:
            log.error("task %s of job %s failed: %s", run[0].id, run[0].job, e)
            for p in run_progress:
                p.failed = True
            # through the writer, after the batches already queued there: each task is reported once
            ctx.writer.submit(Batch([], lambda _, p=run_progress, e=str(e): _report(p, finished, e)))
    left = [p.task for p in progress if not p.failed and p.rendered < p.task.batch_size]
    images = sum(p.rendered for p in progress)
    return {"tasks": len(tasks), "skipped": len(tasks) - len(todo), "images": images}, left


def _runs(tasks: list[RenderTask]) -> list[list[RenderTask]]:
    """Consecutive tasks with equal batch keys (a group from the coordinator is one run)."""
    runs: list[list[RenderTask]] = []
    for task in tasks:
        if runs and batch_key(runs[-1][0]) == batch_key(task):
            runs[-1].append(task)
        else:
            runs.append([task])
    return runs


def _render_run(progress: list[_Progress], store: Store, ctx: WorkerContext, finished: Finished,
                stop: Callable[[], bool]) -> None:
    from torch.cuda import OutOfMemoryError

    from worker.inputs import InputCache
    from worker.kinds import kind_of
    from worker.pipelines import ModelLoadError, free_memory
    from worker.render import RenderError, Slot

    tasks = [p.task for p in progress]
    first = tasks[0]
    kind = kind_of(first)  # an unknown kind fails before anything loads
    if not getattr(kind, "PIPELINE", True):  # upscale: pixels in, pixels out, no checkpoint to load
        return _render_pixels(progress, kind, store, ctx, finished, stop)
    if ctx.model_cache is not None:  # what this PC lacks, from the depot (worker/model_cache.py)
        ctx.model_cache.ensure(first, Registry(ctx.models_dir))
    files = model_files(first, ctx.models_dir)
    path = files.checkpoint
    cache = ctx.pipelines()
    renderer = ctx.task_models
    was_loaded = files in cache
    try:
        pipe = cache.get(files)
    except ModelLoadError as e:
        raise TaskError(str(e)) from None
    if not was_loaded:
        progress[0].load_seconds = cache.load_seconds[cache.key(files)]
        ctx.loaded_checkpoint = first.checkpoint
        ctx.loaded_refiner = files.part("refiner") and first.refiner or ""
        describe = getattr(renderer, "describe", None)  # the stand-in renderer has no weights to describe
        ctx.loaded_as = describe(pipe) if describe else ""
        ctx.loads += 1
        ctx.load_seconds += progress[0].load_seconds
        log.info("loaded checkpoint %s in %.1f s", path.name, progress[0].load_seconds)
    slots = [(p, i) for p in progress for i in range(p.task.batch_size)]
    size = ctx.max_batch or renderer.max_batch(pipe, first)
    try:
        # The run's VAE, LoRAs and embeddings, on the pipeline for these renders only.
        with renderer.prepared(pipe, tasks) as (stripped, params):  # tasks without extra-network tags; infotext keys
            as_rendered = {p.task.id: (t, extra) for p, t, extra in zip(progress, stripped, params)}
            limit = (str(path), first.width, first.height)
            size = min(size, ctx.batch_limits.get(limit, size))
            start = 0
            while start < len(slots):
                if start and stop():  # the first batch always renders: the task the worker is on
                    break
                chunk = slots[start : start + size]
                started = time.perf_counter()
                inputs = InputCache(store)  # this batch's input images only: memory stays bounded
                batch = [Slot(as_rendered[p.task.id][0], i, inputs.of(p.task)) for p, i in chunk]
                try:
                    images = renderer.render(pipe, kind, batch)
                except OutOfMemoryError:
                    if size == 1:
                        raise
                    # The size guessed from VRAM did not fit (another program on the card, a big
                    # LoRA ...): half as many images per call, for this checkpoint and size from now on.
                    size = ctx.batch_limits[limit] = size // 2
                    log.warning("out of GPU memory with %d images of %dx%d; %d per call from now on",
                                len(chunk), first.width, first.height, size)
                    free_memory()
                    continue
                seconds = (time.perf_counter() - started) / len(chunk)
                ctx.speeds.add(speed_key(first, family_at(str(path))), seconds)
                _store_later(chunk, images, seconds, len(chunk), as_rendered, store, ctx, finished)
                start += len(chunk)
    except (RenderError, ModelLoadError) as e:
        raise TaskError(str(e)) from None


def _render_pixels(progress: list[_Progress], kind, store: Store, ctx: WorkerContext, finished: Finished,
                   stop: Callable[[], bool]) -> None:
    """The images of a kind that needs no diffusion pipeline (upscale), one at a time; the kind
    writes its own PNG texts (png_texts)."""
    from worker.inputs import InputCache
    from worker.pipelines import ModelLoadError
    from worker.render import RenderError, Slot

    as_rendered = {p.task.id: (p.task, {}) for p in progress}
    slots = [(p, i) for p in progress for i in range(p.task.batch_size)]
    try:
        for n, (p, i) in enumerate(slots):
            if n and stop():
                break
            started = time.perf_counter()
            images = kind.render(None, [Slot(p.task, i, InputCache(store).of(p.task))])  # one input in memory
            _store_later([(p, i)], images, time.perf_counter() - started, 1, as_rendered, store, ctx, finished,
                         kind.png_texts)
    except (RenderError, ModelLoadError) as e:
        raise TaskError(str(e)) from None


def _infotext(task: RenderTask, seed: int, image, extra: dict) -> tuple[str, dict[str, str]]:
    """An image's `parameters` text (A1111's infotext of the task) and its other PNG text chunks."""
    return format_infotext(task.prompt, task.negative_prompt, {**task_parameters(task, seed), **extra}), {}


def _store_later(chunk, images, seconds_per_image: float, batch_size: int, as_rendered: dict, store: Store,
                 ctx: WorkerContext, finished: Finished, texts: Callable = _infotext) -> None:
    """Hand one diffusion batch's images to the writer thread. `texts`: the PNG texts of an image."""
    writes = []
    for (progress, i), image in zip(chunk, images):
        task, seed = progress.task, progress.task.seed + i
        progress.seconds += seconds_per_image
        progress.rendered += 1

        def write(task=task, seed=seed, image=image, extra=as_rendered[task.id][1], progress=progress) -> None:
            if store.exists(record_key(task.job, task.image_stem(seed))):
                progress.discarded += 1  # first stored wins: the other copy's image stays
                return
            text, more = texts(task, seed, image, extra)
            record = image_record(task, seed, text, seconds_per_image, ctx.name)
            record["render_batch"] = batch_size  # images in the diffusion call that made it
            save_image(store, task, seed, png_bytes(image, text, more), record)

        writes.append(write)
    ctx.images_done += len(images)
    ctx.render_seconds += seconds_per_image * len(images)

    def done(failure: str | None) -> None:
        for progress, _ in chunk:
            progress.remaining -= 1
            if failure or progress.remaining == 0:
                _report([progress], finished, failure)

    ctx.writer.submit(Batch(writes, done))


def _report(progress: list[_Progress], finished: Finished, failure: str | None) -> None:
    for p in progress:
        if p.reported:
            continue
        p.reported = True
        images = 0 if failure else p.task.batch_size - p.discarded
        kept = p.seconds * images / p.task.batch_size
        finished(p.task, {"task_id": p.task.id, "images": images, "seconds": kept,
                          "load_seconds": p.load_seconds, "discarded": p.discarded,
                          "discarded_seconds": p.seconds - kept}, failure)
