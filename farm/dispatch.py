"""Putting a job's tasks on the queue: `farm submit` and `farm resume`.

Order of writes, so that a failure at any point leaves nothing half-done: check Redis is reachable,
then write the job record to the store, then register the job's live state, then publish.
"""

from __future__ import annotations

from typing import Iterable

from farm.celery_app import REFRESH_TASK, RENDER_TASK, make_app
from farm.expand import expand
from farm.jobs import finish_job, write_job_record
from farm.ledger import Ledger, connect
from farm.routing import Route, worker_queue
from farm.spec import JobSpec
from farm.store import Store, record_key
from farm.task import RenderTask

PUBLISH_BATCH = 1000


def route_of(task: RenderTask, priority: str = "normal", tags: tuple[str, ...] = ()) -> Route:
    return Route(priority, task.checkpoint, task.checkpoint_hash, task.width * task.height * task.batch_size, tags)


def publish(broker_url: str, tasks: Iterable[RenderTask], store_url: str, priority: str = "normal",
            tags: tuple[str, ...] = ()) -> int:
    """Queue render tasks, each on its route's queue (farm/routing.py), with pipelined publishing
    (kombu's Producer.batch); then tell the workers to look at their queues again."""
    app = make_app(broker_url)
    ledger = Ledger(connect(broker_url))
    known: dict[Route, Route] = {}  # one instance per route, so its queue name is computed once
    count = 0
    with app.producer_or_acquire() as producer:
        with producer.batch(max_size=PUBLISH_BATCH):
            for task in tasks:
                route = route_of(task, priority, tags)
                if route not in known:  # workers learn a route before its first task arrives
                    ledger.register_routes([route])
                    known[route] = route
                route = known[route]
                # argsrepr: what logs and monitors show; Celery's own repr of the task dict
                # would cost more than everything else in this loop together
                app.send_task(RENDER_TASK, args=[task.model_dump(), store_url], producer=producer,
                              task_id=f"{task.job}:{task.id}", queue=route.queue,
                              argsrepr=f"[{task.job} #{task.index}]", kwargsrepr="{}")
                count += 1
    wake_workers(app, ledger)
    return count


def wake_workers(app, ledger: Ledger) -> None:
    """Tell every live worker to look at the routes again, through its own queue (a worker blocked
    reading its old set of queues wakes at once)."""
    for worker in ledger.workers():
        app.send_task(REFRESH_TASK, queue=worker_queue(worker["name"]), expires=120)


def submit(spec: JobSpec, store: Store, broker_url: str) -> int:
    """Record the job in the store and queue all its tasks; returns the number queued."""
    ledger = Ledger(connect(broker_url))
    info = write_job_record(store, spec)
    ledger.register_job(spec.job_id, info)
    return publish(broker_url, expand(spec), store.url, spec.priority, spec.requires)


def resume(spec: JobSpec, store: Store, broker_url: str) -> tuple[int, int]:
    """Reconcile a job with its store: reset its live state to what the store holds and re-queue
    every task whose output is missing. Returns (tasks already done, tasks re-queued).
    The records folder is listed once, not asked once per image."""
    ledger = Ledger(connect(broker_url))
    info = write_job_record(store, spec)
    recorded = set(store.list_keys(f"{spec.job_id}/records/"))

    def in_store(task: RenderTask) -> bool:
        return all(record_key(spec.job_id, task.image_stem(seed)) in recorded for seed in task.seeds)

    done = {task.id for task in expand(spec) if in_store(task)}
    ledger.register_job(spec.job_id, info, done=done)
    if len(done) == spec.task_count():
        finish_job(store, ledger, spec.job_id)
        return len(done), 0
    missing = (t for t in expand(spec) if not in_store(t))
    return len(done), publish(broker_url, missing, store.url, spec.priority, spec.requires)
