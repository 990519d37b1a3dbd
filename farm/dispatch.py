"""Putting a job's tasks on the queue: `farm submit` and `farm resume`.

Order of writes, so that a failure at any point leaves nothing half-done: check Redis is reachable,
then write the job record to the store, then register the job's live state, then publish.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Iterable

from farm.batching import group_size, group_tasks
from farm.celery_app import REFRESH_TASK, make_app
from farm.expand import expand
from farm.families import UNKNOWN
from farm.jobs import finish_job, write_job_record
from farm.ledger import Ledger, connect
from farm.messages import Route, route_of, send, worker_queue
from farm.spec import JobSpec
from farm.speeds import speed_key, workers_by_speed
from farm.store import Store, record_key
from farm.store.layout import records_prefix
from farm.task import RenderTask
from farm.tunables import PUBLISH_BATCH
from farm.vram import Footprint, Weights, footprint, has_parts, typical_footprint, unholdable


def publish(broker_url: str, tasks: Iterable[RenderTask], store_url: str, priority: str = "normal",
            tags: tuple[str, ...] = (), task_count: int = 0, group: int | None = None,
            weigh: Callable[[Route], Footprint | None] | None = None,
            warn: Callable[[str], None] | None = None, family_of: Callable[[str], str] | None = None) -> int:
    """Queue render tasks in groups that can share a diffusion batch (farm/batching.py; `group`
    tasks per message at most, by default sized from task_count and the live workers), each group
    on its route's queue (farm/messages.py), with pipelined publishing (kombu's Producer.batch);
    then tell the workers to look at their queues again. Returns the number of tasks queued.
    With `weigh` (route -> what its render holds) and `warn`: one warning per checkpoint whose tasks
    no live worker could hold (farm/vram.py); they are queued all the same. `family_of` (checkpoint
    -> family) lets the group size count the live workers by their announced speed (farm/speeds.py)
    for the job's first render."""
    app = make_app(broker_url)
    ledger = Ledger(connect(broker_url))
    workers = ledger.workers()
    if group is None:
        tasks = iter(tasks)
        first = next(tasks, None)  # peeked for its speed key, then put back
        tasks = chain([first] if first else [], tasks)
        key = speed_key(first, family_of(first.checkpoint) if family_of else UNKNOWN) if first else ""
        group = group_size(task_count, workers_by_speed(workers, key))
    known: dict[Route, Route] = {}  # one instance per route, so its queue name is computed once
    counts: dict[Route, int] = {}
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
                counts[route] = counts.get(route, 0) + len(tasks_)
    wake_workers(app, ledger)
    if weigh is not None and warn is not None:
        for line in unholdable(counts, workers, weigh):
            warn(line)
    return count


def weigher(spec: JobSpec, models_dir: Path | None = None) -> Callable[[Route], Footprint | None]:
    """route -> what its render holds, for the submit warning: from the coordinator's own files when
    it has the models folder, else the family's smallest usual files (farm/vram.py TYPICAL_*: a
    warning then means no file of that family could fit); None for an unknown family."""
    from farm.model_files import ModelFileError
    from farm.models import Registry

    registry = Registry(models_dir) if models_dir else None
    cache: dict[tuple, Footprint | None] = {}

    def weigh(route: Route) -> Footprint | None:
        key = (route.checkpoint, route.parts)
        if key in cache:
            return cache[key]
        name = spec.family_of(route.checkpoint)
        if name == UNKNOWN:
            fp = None
        elif not has_parts(name):  # SD1.5/SDXL: the family's weights_gb (and its refiner's)
            fp = Footprint(name, Weights(0, "?"), refiner="SDXL refiner" if dict(route.parts).get("refiner") else None)
        else:
            fp = typical_footprint(name, None, "t5xxl_fp8")
            path = spec.checkpoint_files.get(route.checkpoint)
            if path is not None and registry is not None:
                try:
                    parts = {role: registry.resolve("vae" if role == "vae" else "text_encoder", file).path
                             if file else None for role, file in route.parts}
                    fp = footprint(name, path, parts)
                except (ModelFileError, OSError):
                    pass
        cache[key] = fp
        return fp

    return weigh


def wake_workers(app, ledger: Ledger) -> None:
    """Tell every live worker to look at the routes again, through its own queue (a worker blocked
    reading its old set of queues wakes at once)."""
    for worker in ledger.workers():
        app.send_task(REFRESH_TASK, queue=worker_queue(worker["name"]), expires=120)


def submit(spec: JobSpec, store: Store, broker_url: str, models_dir: Path | None = None,
           warn: Callable[[str], None] | None = None) -> int:
    """Record the job in the store and queue all its tasks; returns the number queued. `warn` is
    told of each checkpoint whose tasks no live worker could hold (weighed with the files of
    `models_dir` when given)."""
    ledger = Ledger(connect(broker_url))
    info = write_job_record(store, spec)
    ledger.register_job(spec.job_id, info)
    return publish(broker_url, expand(spec), store.url, spec.priority, spec.requires, spec.task_count(),
                   weigh=weigher(spec, models_dir) if warn else None, warn=warn, family_of=spec.family_of)


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
                              spec.task_count() - len(done), family_of=spec.family_of)
