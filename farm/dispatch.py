"""Putting a job's tasks on the queue: `farm submit` and `farm resume`.

Order of writes, so that a failure at any point leaves nothing half-done: check Redis is reachable,
then write the job record to the store, then register the job's live state, then publish.
"""

from __future__ import annotations

from typing import Iterable

from farm.batching import group_size, group_tasks
from farm.celery_app import REFRESH_TASK, make_app
from farm.expand import expand
from farm.jobs import finish_job, write_job_record
from farm.ledger import Ledger, connect
from farm.messages import Route, route_of, send, worker_queue
from farm.spec import JobSpec
from farm.store import Store, record_key
from farm.store.layout import records_prefix
from farm.task import RenderTask
from farm.tunables import PUBLISH_BATCH


def publish(broker_url: str, tasks: Iterable[RenderTask], store_url: str, priority: str = "normal",
            tags: tuple[str, ...] = (), task_count: int = 0, group: int | None = None) -> int:
    """Queue render tasks in groups that can share a diffusion batch (farm/batching.py; `group`
    tasks per message at most, by default sized from task_count and the live workers), each group
    on its route's queue (farm/messages.py), with pipelined publishing (kombu's Producer.batch);
    then tell the workers to look at their queues again. Returns the number of tasks queued."""
    app = make_app(broker_url)
    ledger = Ledger(connect(broker_url))
    if group is None:
        group = group_size(task_count, len(ledger.workers()))
    known: dict[Route, Route] = {}  # one instance per route, so its queue name is computed once
    count = 0
    with app.producer_or_acquire() as producer:
        with producer.batch(max_size=PUBLISH_BATCH):
            for tasks_ in group_tasks(tasks, group):
                first = tasks_[0]
                route = route_of(first, priority, tags)  # equal for the whole group (batch_key)
                if route not in known:  # workers learn a route before its first task arrives
                    ledger.register_routes([route])
                    known[route] = route
                route = known[route]
                send(app, tasks_, store_url, route.queue, producer)
                count += len(tasks_)
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
    return publish(broker_url, expand(spec), store.url, spec.priority, spec.requires, spec.task_count())


def resume(spec: JobSpec, store: Store, broker_url: str) -> tuple[int, int]:
    """Reconcile a job with its store: reset its live state to what the store holds and re-queue
    every task whose output is missing. Returns (tasks already done, tasks re-queued).
    The records folder is listed once, not asked once per image."""
    ledger = Ledger(connect(broker_url))
    info = write_job_record(store, spec)
    recorded = set(store.list_keys(records_prefix(spec.job_id)))

    def in_store(task: RenderTask) -> bool:
        return all(record_key(spec.job_id, task.image_stem(seed)) in recorded for seed in task.seeds)

    done = {task.id for task in expand(spec) if in_store(task)}
    ledger.register_job(spec.job_id, info, done=done)
    if len(done) == spec.task_count():
        finish_job(store, ledger, spec.job_id)
        return len(done), 0
    missing = (t for t in expand(spec) if not in_store(t))
    return len(done), publish(broker_url, missing, store.url, spec.priority, spec.requires,
                              spec.task_count() - len(done))
