"""The render task's Celery registration: the one body that `farm run` (in process) and `farm
worker` (via Redis) execute. A message carries a group of tasks that can share diffusion batches
(farm/batching.py); the body renders them with the render loop (worker/render_loop.py) in the
worker's context (worker/context.py), keeps the job's live state in the ledger and hands work back
to the queue on a shutdown, or to faster idle workers (worker/sharing.py). A render message on the
worker's own queue is a backup render it chose itself (worker/backups.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from celery import Celery
from celery.exceptions import Reject

from farm.celery_app import RENDER_TASK
from farm.messages import route_of, send, worker_queue
from farm.store import Store, is_done, open_store
from farm.store.failures import refused
from farm.task import RenderTask
from farm.tunables import RETRIES, RETRY_DELAY
from worker.context import WorkerContext, context
from worker.model_cache import DepotUnreachable, depot_wait
from worker.render_loop import render_tasks
from worker.sharing import hand_back_now, kept, task_speed_key

if TYPE_CHECKING:
    from farm.ledger import Ledger

log = logging.getLogger("seedfarm.worker")


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
        cancelled, refusal = ledger.job_state(job)  # one round trip for both
        if cancelled:
            return {"tasks": len(group), "images": 0, "cancelled": True}
        queue = (self.request.delivery_info or {}).get("routing_key") or ""
        backup = queue == worker_queue(ctx.name)  # its hold was taken over already (worker/backups.py)
        key = task_speed_key(group[0], ctx.models_dir)
        keep = len(group) if backup else kept(len(group), key, ctx, ledger, queue)
        if keep < len(group):  # a slower card than others on this queue: a smaller piece
            send(app, group[keep:], store_url, queue)
            log.info("kept %d of %d task(s) for this card's speed, handed the rest back", keep, len(group))
            group = group[:keep]
        if not backup:
            ledger.tasks_started(job, group, ctx.name, ctx.life, store_url, queue)

        def finished(task: RenderTask, summary: dict, failure: str | None) -> None:
            if refused(failure):
                ledger.store_refused(job, failure)
            report_finished(ledger, store, task, ctx, summary, failure)

        if refusal:  # the store refuses writes (disk full ...): fail at once, render nothing
            for task in group:
                finished(task, {"task_id": task.id, "images": 0}, refusal)
            return {"tasks": len(group), "images": 0, "failed": refusal}
        images, images_before = sum(t.batch_size for t in group), ctx.images_done

        def stop() -> bool:  # Ctrl+C, a cancelled job, a store refusing writes, or faster idle workers
            if ctx.stopping:
                return True
            cancelled, refusal, waiting = ledger.between_batches(job, queue)
            return cancelled or bool(refusal) or not backup and hand_back_now(
                ledger, ctx, queue, key, images - (ctx.images_done - images_before), waiting)

        ledger.set_busy(ctx.name, True)
        ctx.current_task = group[0]
        try:
            summary, left = render_tasks(group, store, ctx, finished, stop=stop)
            if backup:
                ledger.count_backups(job, summary["tasks"] - summary["skipped"])
            cancelled, refusal = ledger.job_state(job)
            if cancelled:
                return {**summary, "cancelled": True}
            if left and refusal:  # stopped because the store refuses writes: the rest fail too
                ctx.writer.flush()
                for task in left:
                    finished(task, {"task_id": task.id, "images": 0}, refusal)
                return {**summary, "failed": refusal}
            # A backup's rest stays held by this worker: the reaper re-queues it once this worker stops.
            held = ledger.held_by(job, [t.id for t in left], ctx.life) if left and not backup else set()
            left = [t for t in left if t.id in held]  # not the tasks a backup render took over
            if left:  # shutting down (Ctrl+C) or faster idle workers: hand the unrendered tasks back
                send(app, left, store_url, queue or route_of(left[0]).queue)
                for task in left:
                    ledger.release_orphan(job, task.id, ctx.life)
                log.info("handed %d task(s) back to the queue", len(left))
            return {**summary, "handed_back": len(left)}
        except DepotUnreachable as e:
            # Not the task's fault: back on its queue, not a try, while someone may render it
            # (worker/model_cache.py depot_wait); this worker offers no fetching for a while.
            ctx.writer.flush()
            left = [task for task in group if not is_done(store, task)]
            reason = depot_wait(ledger, ctx.name, group[0], e) if left else None
            if reason is None:
                if left:
                    send(app, left, store_url, queue or route_of(left[0]).queue)
                for task in left:
                    ledger.release_orphan(job, task.id, ctx.life)
                log.warning("job %s: %s; handed %d task(s) back to the queue", job, e, len(left))
                return {"tasks": len(group), "images": 0, "handed_back": len(left)}
            for task in left:
                finished(task, {"task_id": task.id, "images": 0}, reason)
            return {"tasks": len(group), "images": 0, "failed": reason}
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
            try:
                ledger.set_busy(ctx.name, False, ctx.speeds.to_json())
            except Exception as e:  # Redis away for a moment: the heartbeat announces the speeds
                log.debug("could not announce speeds: %s", e)

    return render


def report_finished(ledger: "Ledger", store: Store, task: RenderTask, ctx: WorkerContext, summary: dict,
                    failed: str | None = None) -> None:
    """Record the task in the live state; the caller that lands the job's last task builds sheets."""
    if failed:
        log.error("task %s of job %s failed: %s", task.id, task.job, failed)
    if summary.get("discarded"):
        ledger.count_discarded(task.job, summary["discarded"], summary.get("discarded_seconds", 0.0))
    last = ledger.task_finished(task.job, task.id, ctx.name, images=summary.get("images", 0),
                                seconds=summary.get("seconds", 0.0), failed=failed,
                                load_seconds=summary.get("load_seconds", 0.0))
    if last:
        from farm.jobs import finish_job

        sheets = finish_job(store, ledger, task.job)
        log.info("job %s complete; contact sheets: %s", task.job, ", ".join(map(store.describe, sheets)))
