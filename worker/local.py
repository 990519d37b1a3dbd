"""`farm run`: the coordinator and one in-process worker, no servers.

Tasks go through the same Celery task body the distributed workers run (executed in process with
`apply`), so what works here works on the farm.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from farm.celery_app import make_app
from farm.expand import expand
from farm.grid import write_sheets
from farm.jobs import write_job_record
from farm.spec import JobSpec
from farm.store import Store, is_done, write_manifest
from worker import tasks


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
) -> RunSummary:
    """Render every task of the spec that is not yet in the store; then the manifest and sheets.
    A failing task is reported and the others still render."""
    tasks.configure(models_dir, name="local")
    app = make_app()
    render = tasks.register(app)
    write_job_record(store, spec)
    summary = RunSummary(job=spec.job_id)
    started = time.perf_counter()
    for task in expand(spec):
        if is_done(store, task):
            summary.skipped += task.batch_size
            on_images(task.batch_size)
            continue
        result = render.apply(args=[task.model_dump(), store.url])
        if result.failed():
            error = result.result
            reason = str(error) if isinstance(error, tasks.TaskError) else f"{type(error).__name__}: {error}"
            summary.failed.append(f"task {task.index} ({task.id}): {reason}")
        else:
            summary.images += result.result["images"]
        on_images(task.batch_size)
    summary.seconds = time.perf_counter() - started
    summary.manifest_lines = write_manifest(store, spec.job_id)
    if summary.manifest_lines:
        summary.sheets = write_sheets(store, spec.job_id, x=spec.grid_x, y=spec.grid_y)
    return summary
