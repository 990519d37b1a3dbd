"""`farm run`: the coordinator and one in-process worker, no servers.

Tasks go through the same Celery task body the distributed workers run (executed in process with
`apply`), so what works here works on the farm.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from farm.batching import group_tasks
from farm.celery_app import make_app
from farm.expand import expand
from farm.jobs import write_job_outputs, write_job_record
from farm.models import Registry, human_size
from farm.spec import JobSpec
from farm.store import Store
from farm.store.failures import refused
from farm.tunables import MAX_GROUP
from worker import tasks
from worker.context import configure
from worker.kinds import kind_of
from worker.model_cache import ModelCache


@dataclass
class RunSummary:
    job: str
    images: int = 0  # rendered now
    skipped: int = 0  # already in the store from an earlier run
    failed: list[str] = field(default_factory=list)  # one line per failed task
    seconds: float = 0.0
    sheets: list[str] = field(default_factory=list)
    manifest_lines: int = 0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def run_local(
    spec: JobSpec,
    store: Store,
    models_dir: Path,
    on_images: Callable[[int], None] = lambda n: None,
    max_batch: int | None = None,
    model_cache: ModelCache | None = None,
) -> RunSummary:
    """Render every task of the spec that is not yet in the store; then the manifest and sheets.
    Tasks are grouped and batched as on the farm (farm/batching.py), and images are stored while
    the next batch renders. A failing task is reported and the others still render. With a model
    cache, models_dir includes its root and tasks find what it fetched as a worker's do."""
    ctx = configure(models_dir, name="local", max_batch=max_batch, model_cache=model_cache)
    app = make_app()
    render = tasks.register(app)
    write_job_record(store, spec)
    summary = RunSummary(job=spec.job_id)
    reported: set[str] = set()
    refusal: list[str] = []  # why the store refuses writes, once it does (a full disk ...)

    def finished(task, result: dict, failure: str | None) -> None:  # on the writer thread
        reported.add(task.id)
        if refused(failure) and not refusal:
            refusal.append(failure)
        if failure:
            summary.failed.append(f"task {task.index} ({task.id}): {failure}")
        elif result.get("skipped"):
            summary.skipped += task.batch_size
        else:
            summary.images += result["images"]
        on_images(task.batch_size)

    ctx.on_finished = finished
    started = time.perf_counter()
    for group in group_tasks(expand(spec), MAX_GROUP):
        if refusal:  # rendering the rest would be for nothing: they fail, and a rerun renders them
            for task in group:
                finished(task, {}, refusal[0])
            continue
        result = render.apply(args=[[task.model_dump() for task in group], store.url])
        if result.failed():  # not a TaskError (those are reported): every task not stored fails
            ctx.writer.flush()
            error = result.result
            for task in group:
                if task.id not in reported:
                    finished(task, {}, f"{type(error).__name__}: {error}")
    ctx.writer.flush()
    summary.seconds = time.perf_counter() - started
    if refusal:  # the manifest and sheets would be refused too; the rerun writes them
        return summary
    outputs = write_job_outputs(store, spec.job_id)  # as a farm worker finishes a job, without the ledger
    summary.manifest_lines, summary.sheets = outputs.manifest_lines, outputs.sheets
    return summary


def fetch_models(spec: JobSpec, cache: ModelCache, models_dir: Path) -> list[str]:
    """Fetch into the cache, before anything renders, what the spec's tasks need and models_dir
    (the user's folders and the cache) lacks: from the URLs the spec gives, and from the cache's
    depot by name. The render loop asks the cache the same per group (ModelCache.ensure); asked
    here first, a model that cannot be fetched stops the run in one line (DepotUnreachable,
    TaskError) instead of failing, and downloading again, for each group. Returns a line per model
    fetched."""
    registry = Registry(models_dir)
    before = set(cache.holds())
    for group in group_tasks(expand(spec), MAX_GROUP):
        if getattr(kind_of(group[0]), "PIPELINE", True):  # upscale tasks load no checkpoint
            cache.ensure(group[0], registry)
    fetched = [cache.cached(sha) for sha in set(cache.holds()) - before]
    return sorted(f"{path.parent.parent.name}/{path.name} ({human_size(path.stat().st_size)}) into the model "
                  f"cache {cache.root}" for path in fetched if path is not None)
