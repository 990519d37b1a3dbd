"""The render task: the one body that `farm run` (in process) and `farm worker` (via Redis) execute.

A task is idempotent: its images are named by task id and seed, and a task whose records are all in
the store is skipped, so a redelivery after a crash never renders or records an image twice.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from celery import Celery
from celery.exceptions import Reject

from farm.celery_app import RENDER_TASK
from farm.checkpoints import resolve_checkpoint, sha256_file
from farm.infotext import format_infotext, png_bytes, task_parameters
from farm.store import Store, image_record, is_done, open_store, save_image
from farm.task import RenderTask

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


def execute(task: RenderTask, store: Store, ctx: WorkerContext | None = None) -> dict:
    """Render one task into the store. Returns a small summary (the only thing results carry)."""
    ctx = ctx or context()
    if is_done(store, task):
        return {"task_id": task.id, "images": 0, "skipped": True}
    from worker.pipelines import ModelLoadError
    from worker.render import RenderError, render_images
    from worker.standin import StandinPipeline

    path = checkpoint_path(task, ctx.models_dir)
    cache = ctx.pipelines()
    was_loaded = path in cache
    try:
        pipe = cache.get(path)
    except ModelLoadError as e:
        raise TaskError(str(e)) from None
    load_seconds = 0.0
    if not was_loaded:
        load_seconds = cache.load_seconds[path]
        ctx.loaded_checkpoint = task.checkpoint
        ctx.loads += 1
        ctx.load_seconds += load_seconds
        log.info("loaded checkpoint %s in %.1f s", path.name, load_seconds)
    started = time.perf_counter()
    try:
        # The task's VAE, LoRAs and embeddings, on the pipeline for this render only.
        if isinstance(pipe, StandinPipeline):
            images, model_params = pipe.render(task), {}
        else:
            with ctx.task_models.prepared(pipe, task) as (render_task, model_params):
                images = render_images(pipe, render_task)
    except (RenderError, ModelLoadError) as e:
        raise TaskError(str(e)) from None
    seconds_per_image = (time.perf_counter() - started) / len(images)
    for seed, image in zip(task.seeds, images):
        params = {**task_parameters(task, seed), **model_params}
        text = format_infotext(task.prompt, task.negative_prompt, params)
        record = image_record(task, seed, text, seconds_per_image, ctx.name)
        save_image(store, task, seed, png_bytes(image, text), record)
    ctx.images_done += len(images)
    ctx.render_seconds += seconds_per_image * len(images)
    return {"task_id": task.id, "images": len(images), "seconds": seconds_per_image * len(images),
            "load_seconds": load_seconds}


RETRIES = 3  # for unexpected errors (a store upload that keeps failing, CUDA out of memory ...)
RETRY_DELAY = 10  # seconds; far below the visibility timeout, so a retry is never duplicated


def register(app: Celery, ledger: "Ledger | None" = None, store_override: str | None = None):
    """Register the render task body on a Celery app; returns the task object.

    With a ledger (the distributed farm) the task also keeps the job's live state, and the worker
    that finishes a job's last task builds its manifest and contact sheets. `farm run` passes no
    ledger and finishes the job itself.
    """

    @app.task(name=RENDER_TASK, bind=True, max_retries=RETRIES)
    def render(self, task: dict, store_url: str) -> dict:
        task = RenderTask.from_json(task)
        store = open_store(store_override or store_url)
        if ledger is None:
            return execute(task, store)
        if ledger.is_cancelled(task.job):
            return {"task_id": task.id, "images": 0, "cancelled": True}
        ctx = context()
        ledger.task_started(task.job, task.id, ctx.name)
        ctx.current_task = task
        try:
            summary = execute(task, store, ctx)
        except TaskError as e:
            log.error("task %s of job %s failed: %s", task.id, task.job, e)
            return finish(ledger, store, task, ctx, failed=str(e))
        except NotImplementedError:
            # A second Ctrl+C (cold shutdown) on the solo pool lands here; hand the task back
            # instead of letting Celery ack it as failed, which would lose it.
            raise Reject("worker shutting down", requeue=True) from None
        except Exception as e:
            if self.request.retries < RETRIES:
                log.warning("task %s: %s: %s; retrying in %d s", task.id, type(e).__name__, e, RETRY_DELAY)
                raise self.retry(exc=e, countdown=RETRY_DELAY) from None
            log.exception("task %s failed after %d retries", task.id, RETRIES)
            return finish(ledger, store, task, ctx, failed=f"{type(e).__name__}: {e}")
        finally:
            ctx.current_task = None
        return finish(ledger, store, task, ctx, summary=summary)

    return render


def finish(ledger: "Ledger", store: Store, task: RenderTask, ctx: WorkerContext,
           summary: dict | None = None, failed: str | None = None) -> dict:
    """Record the task in the live state; the caller that lands the job's last task builds sheets."""
    summary = summary or {"task_id": task.id, "images": 0}
    last = ledger.task_finished(task.job, task.id, ctx.name, images=summary.get("images", 0),
                                seconds=summary.get("seconds", 0.0), failed=failed,
                                load_seconds=summary.get("load_seconds", 0.0))
    if last:
        from farm.jobs import finish_job

        sheets = finish_job(store, ledger, task.job)
        log.info("job %s complete; contact sheets: %s", task.job, ", ".join(map(store.describe, sheets)))
    return {**summary, **({"failed": failed} if failed else {})}
