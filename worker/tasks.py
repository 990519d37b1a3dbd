"""The render task: the one body that `farm run` (in process) and `farm worker` (via Redis) execute.

A message carries a group of tasks that can share diffusion batches (farm/batching.py); the worker
renders them in batches of its max batch and hands each batch's images to the writer thread
(worker/writer.py), which stores them while the next batch renders.

A task is idempotent: its images are named by task id and seed, and a task whose records are all in
the store is skipped, so a redelivery after a crash never renders or records an image twice.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from celery import Celery
from celery.exceptions import Reject

from farm.batching import batch_key
from farm.celery_app import RENDER_TASK
from farm.checkpoints import resolve_checkpoint, sha256_file
from farm.dispatch import route_of, send
from farm.infotext import format_infotext, png_bytes, task_parameters
from farm.store import Store, image_record, is_done, open_store, save_image
from farm.task import RenderTask
from worker.writer import Batch, ImageWriter

if TYPE_CHECKING:
    from farm.ledger import Ledger

log = logging.getLogger("seedfarm.worker")


class TaskError(Exception):
    """A task that cannot render on this worker, with a reason a person can act on."""


@dataclass
class WorkerContext:
    """What one worker process knows: where its models are, its name, its loaded pipelines."""

    models_dir: Path
    name: str = field(default_factory=socket.gethostname)
    cache: object = None  # worker.pipelines.PipelineCache, created on first use (imports torch)
    images_done: int = 0
    current_task: RenderTask | None = None
    loaded_checkpoint: str = ""
    next_checkpoint: str = ""  # where this worker goes when its checkpoint's work runs out
    loads: int = 0
    load_seconds: float = 0.0
    render_seconds: float = 0.0  # total, for the average cost of an image here

    allow_pickle: bool = False  # read pickled .ckpt/.pt model files (weights-only) too
    profile: object = None  # worker.memory.MemoryProfile; None: chosen from the hardware
    task_models: object = None  # worker.prepare.TaskModels, created with the cache
    max_batch: int | None = None  # images per diffusion call; None: picked from VRAM and size
    batch_limits: dict = field(default_factory=dict)  # (checkpoint, w, h) -> max batch after running out of memory
    writer: ImageWriter = field(default_factory=ImageWriter)  # stores images while the next renders
    on_finished: Callable | None = None  # `farm run`: told of each finished task (see register)
    stopping: bool = False  # set by a warm shutdown (Ctrl+C): stop between diffusion batches
    life: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # this process, for the reaper

    def pipelines(self):
        if self.cache is None:
            from worker.pipelines import PipelineCache
            from worker.prepare import TaskModels

            from worker.standin import standin_loader

            self.task_models = TaskModels(self.models_dir, self.profile, self.allow_pickle)
            self.profile = self.task_models.profile
            # benchmarks of the farm itself swap diffusion for sleeps (worker/standin.py)
            self.cache = PipelineCache(loader=standin_loader() or self.task_models.load)
        return self.cache


_context: WorkerContext | None = None


def configure(models_dir: Path, name: str | None = None, **options) -> WorkerContext:
    """options: WorkerContext fields such as allow_pickle and profile."""
    global _context
    if _context is not None:
        _context.writer.close()  # its thread; what it still holds is stored first
    _context = WorkerContext(models_dir=Path(models_dir), **({"name": name} if name else {}), **options)
    return _context


def context() -> WorkerContext:
    if _context is None:
        raise RuntimeError("worker not configured: call worker.tasks.configure(models_dir) first")
    return _context


def checkpoint_path(task: RenderTask, models_dir: Path) -> Path:
    """The local file for the task's checkpoint; refuses a same-named file with other weights."""
    try:
        path = resolve_checkpoint(task.checkpoint, models_dir)
    except ValueError as e:
        from worker.pipelines import ModelLoadError, hub_folder

        try:  # a hub id (org/name) in no models folder: the Hugging Face cache's copy
            path = hub_folder(task.checkpoint, models_dir, str(e))
        except ModelLoadError as error:
            raise TaskError(str(error)) from None
    if task.checkpoint_hash and sha256_file(path) != task.checkpoint_hash:
        raise TaskError(
            f"checkpoint '{task.checkpoint}' at {path} has hash {sha256_file(path)[:10]}, but the job "
            f"was expanded against {task.checkpoint_hash[:10]}: copy the same file to this worker"
        )
    return path


@dataclass
class _Progress:
    """A task whose images are being rendered and stored; reported once, from the writer thread."""

    task: RenderTask
    remaining: int  # images not stored yet
    seconds: float = 0.0  # render time of its images
    load_seconds: float = 0.0
    rendered: int = 0  # images handed to the writer (counted on the render thread)
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
    from worker.lora import pipeline_family
    from worker.memory import auto_max_batch
    from torch.cuda import OutOfMemoryError

    from worker.pipelines import ModelLoadError, free_memory
    from worker.render import RenderError, Slot, render_batch
    from worker.standin import StandinPipeline

    tasks = [p.task for p in progress]
    first = tasks[0]
    path = checkpoint_path(first, ctx.models_dir)
    cache = ctx.pipelines()
    was_loaded = path in cache
    try:
        pipe = cache.get(path)
    except ModelLoadError as e:
        raise TaskError(str(e)) from None
    if not was_loaded:
        progress[0].load_seconds = cache.load_seconds[path]
        ctx.loaded_checkpoint = first.checkpoint
        ctx.loads += 1
        ctx.load_seconds += progress[0].load_seconds
        log.info("loaded checkpoint %s in %.1f s", path.name, progress[0].load_seconds)
    slots = [(p, i) for p in progress for i in range(p.task.batch_size)]
    if isinstance(pipe, StandinPipeline):  # benchmarks of the farm itself (worker/standin.py)
        size = ctx.max_batch or 1  # it sleeps per image: batching it would only delay results
        prepared = contextlib.nullcontext((tasks, [{} for _ in tasks]))
    else:
        size = ctx.max_batch or auto_max_batch(ctx.profile, pipeline_family(pipe), first.width, first.height)
        prepared = ctx.task_models.prepared(pipe, tasks)
    try:
        # The run's VAE, LoRAs and embeddings, on the pipeline for these renders only.
        with prepared as (stripped, params):  # tasks with the tags out of their prompts; infotext keys
            as_rendered = {p.task.id: (t, extra) for p, t, extra in zip(progress, stripped, params)}
            limit = (str(path), first.width, first.height)
            size = min(size, ctx.batch_limits.get(limit, size))
            start = 0
            while start < len(slots):
                if start and stop():  # the first batch always renders: the task the worker is on
                    break
                chunk = slots[start : start + size]
                started = time.perf_counter()
                batch = [Slot(as_rendered[p.task.id][0], i) for p, i in chunk]
                try:
                    images = pipe.render(batch) if isinstance(pipe, StandinPipeline) else render_batch(pipe, batch)
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
                _store_later(chunk, images, seconds, len(chunk), as_rendered, store, ctx, finished)
                start += len(chunk)
    except (RenderError, ModelLoadError) as e:
        raise TaskError(str(e)) from None


def _store_later(chunk, images, seconds_per_image: float, batch_size: int, as_rendered: dict, store: Store,
                 ctx: WorkerContext, finished: Finished) -> None:
    """Hand one diffusion batch's images to the writer thread."""
    writes = []
    for (progress, i), image in zip(chunk, images):
        task, seed = progress.task, progress.task.seed + i
        progress.seconds += seconds_per_image
        progress.rendered += 1

        def write(task=task, seed=seed, image=image, extra=as_rendered[task.id][1]) -> None:
            text = format_infotext(task.prompt, task.negative_prompt, {**task_parameters(task, seed), **extra})
            record = image_record(task, seed, text, seconds_per_image, ctx.name)
            record["render_batch"] = batch_size  # images in the diffusion call that made it
            save_image(store, task, seed, png_bytes(image, text), record)

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
        images = 0 if failure else p.task.batch_size
        finished(p.task, {"task_id": p.task.id, "images": images, "seconds": p.seconds,
                          "load_seconds": p.load_seconds}, failure)


RETRIES = 3  # for unexpected errors (CUDA out of memory ...); a store that fails retries in worker/writer.py
RETRY_DELAY = 10  # seconds; far below the visibility timeout, so a retry is never duplicated


def register(app: Celery, ledger: "Ledger | None" = None, store_override: str | None = None):
    """Register the render task body on a Celery app; returns the task object.

    A message holds a group of tasks (farm/batching.py). With a ledger (the distributed farm) the
    body also keeps the job's live state, holds each task's payload there until its images are
    stored (so the reaper can re-queue it if this PC goes off after the ack), and the worker that
    stores a job's last image builds its manifest and contact sheets. `farm run` passes no ledger:
    it gets each finished task through ctx.on_finished and finishes the job itself.
    """

    @app.task(name=RENDER_TASK, bind=True, max_retries=RETRIES)
    def render(self, payload: list[dict], store_url: str) -> dict:
        group = [RenderTask.from_json(task) for task in payload]
        store = open_store(store_override or store_url)
        ctx = context()
        if ledger is None:
            return render_tasks(group, store, ctx, ctx.on_finished)[0]
        job = group[0].job
        if ledger.is_cancelled(job):
            return {"tasks": len(group), "images": 0, "cancelled": True}
        queue = (self.request.delivery_info or {}).get("routing_key") or ""
        ledger.tasks_started(job, group, ctx.name, ctx.life, store_url, queue)

        def finished(task: RenderTask, summary: dict, failure: str | None) -> None:
            report_finished(ledger, store, task, ctx, summary, failure)

        ctx.current_task = group[0]
        try:
            summary, left = render_tasks(group, store, ctx, finished,
                                         stop=lambda: ctx.stopping or ledger.is_cancelled(job))
            if ledger.is_cancelled(job):
                return {**summary, "cancelled": True}
            if left:  # shutting down (Ctrl+C): hand the group's unrendered tasks back now
                send(app, left, store_url, queue or route_of(left[0]).queue)
                for task in left:
                    ledger.release_orphan(job, task.id, ctx.life)
                log.info("handed %d task(s) back to the queue", len(left))
            return {**summary, "handed_back": len(left)}
        except NotImplementedError:
            # A second Ctrl+C (cold shutdown) on the solo pool lands here; hand the message back
            # instead of letting Celery ack it as failed, which would lose it.
            raise Reject("worker shutting down", requeue=True) from None
        except Exception as e:
            if self.request.retries < RETRIES:
                log.warning("job %s: %s: %s; retrying in %d s", job, type(e).__name__, e, RETRY_DELAY)
                raise self.retry(exc=e, countdown=RETRY_DELAY) from None
            log.exception("tasks of job %s failed after %d retries", job, RETRIES)
            ctx.writer.flush()  # what was rendered is stored and reported first
            reason = f"{type(e).__name__}: {e}"
            for task in group:
                if not is_done(store, task):
                    finished(task, {"task_id": task.id, "images": 0}, reason)
            return {"tasks": len(group), "images": 0, "failed": reason}
        finally:
            ctx.current_task = None

    return render


def report_finished(ledger: "Ledger", store: Store, task: RenderTask, ctx: WorkerContext, summary: dict,
                    failed: str | None = None) -> None:
    """Record the task in the live state; the caller that lands the job's last task builds sheets."""
    if failed:
        log.error("task %s of job %s failed: %s", task.id, task.job, failed)
    last = ledger.task_finished(task.job, task.id, ctx.name, images=summary.get("images", 0),
                                seconds=summary.get("seconds", 0.0), failed=failed,
                                load_seconds=summary.get("load_seconds", 0.0))
    if last:
        from farm.jobs import finish_job

        sheets = finish_job(store, ledger, task.job)
        log.info("job %s complete; contact sheets: %s", task.job, ", ".join(map(store.describe, sheets)))
