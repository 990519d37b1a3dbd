"""A job's own record in the store: the spec copy and what it expanded against.

Written before any task is queued or rendered, so that whatever happens next the job can be
resumed from the store alone (`farm resume`), even after Redis lost everything.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from farm.grid import write_sheets
from farm.ledger import Ledger
from farm.spec import JobSpec
from farm.store import Store, write_manifest


def job_record(spec: JobSpec, store: Store) -> dict:
    return {
        "job": spec.job_id,
        "name": spec.name,
        "tasks": spec.task_count(),
        "images": spec.image_count(),
        "axes": spec.swept_axes(),
        "grid": {"x": spec.grid_x, "y": spec.grid_y},
        # what the checkpoint names meant at submit, so `farm resume` rebuilds the same task ids
        "checkpoint_hashes": spec.checkpoint_hashes(),
        "store": store.url,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_job_record(store: Store, spec: JobSpec) -> dict:
    record = job_record(spec, store)
    store.write_bytes(f"{spec.job_id}/job.yaml", spec.source_text.encode("utf-8"))
    store.write_bytes(f"{spec.job_id}/job.json", json.dumps(record, indent=2).encode("utf-8"))
    return record


def read_job_record(store: Store, job: str) -> tuple[dict, str]:
    """(job.json as a dict, job.yaml text); FileNotFoundError if the store has no such job."""
    record = json.loads(store.read_bytes(f"{job}/job.json"))
    return record, store.read_bytes(f"{job}/job.yaml").decode("utf-8")


def finish_job(store: Store, ledger: Ledger, job: str) -> list[str]:
    """The job's last task has landed: write the manifest and the contact sheets, then mark the
    job finished in the live state. Called by exactly one worker (see Ledger.task_finished)."""
    record, _ = read_job_record(store, job)
    grid = record.get("grid") or {}
    lines = write_manifest(store, job)
    sheets = write_sheets(store, job, x=grid.get("x"), y=grid.get("y")) if lines else []
    failed = ledger.failed_count(job)
    status = "complete" if not failed else f"finished, {failed} failed"
    ledger.set_status(job, status, sheets=json.dumps([store.describe(k) for k in sheets]),
                      finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return sheets
