"""A job in its store: its record (the spec copy and what it expanded against), read back by the
one reader, and the finishing of a job (manifest and contact sheets).

The record is written before any task is queued or rendered, so that whatever happens next the job
can be resumed from the store alone (`farm resume`), even after Redis lost everything.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from farm.sheets import write_sheets
from farm.spec import JobSpec, SpecError, parse_spec
from farm.store import Store, layout, write_manifest

if TYPE_CHECKING:  # the review page reads jobs without the Redis client
    from farm.ledger import Ledger


log = logging.getLogger("seedfarm")

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
    """The job's input images (farm/inputs.py), its spec and its record, in that order: a task
    that exists finds its inputs. Raises farm.inputs.InputError for an input that changed."""
    from farm.inputs import upload

    upload(store, spec.job_id, spec.input_images())
    record = job_record(spec, store)
    store.write_bytes(layout.job_spec_key(spec.job_id), spec.source_text.encode("utf-8"))
    store.write_bytes(layout.job_record_key(spec.job_id), json.dumps(record, indent=2).encode("utf-8"))
    return record


def read_job_record(store: Store, job: str) -> dict:
    """The job's job.json; FileNotFoundError if the store has no such job, ValueError if it is
    not JSON. The one reader of job.json."""
    return json.loads(store.read_bytes(layout.job_record_key(job)))


@dataclass(frozen=True)
class StoredJob:
    """A job as its store holds it: its record and the spec text as submitted."""

    job: str
    record: dict
    spec_text: str

    @property
    def name(self) -> str:
        return self.record.get("name", self.job)

    @property
    def grid(self) -> tuple[str | None, str | None]:
        """The spec's `grid:` choice of axes (x, y)."""
        grid = self.record.get("grid") or {}
        return grid.get("x"), grid.get("y")

    def spec(self) -> JobSpec:
        """The spec parsed as at submit: the checkpoint names meaning the same files, and named
        as at submit, so a spec without `name:` gets the same job id. SpecError if it no longer
        parses."""
        return parse_spec(self.spec_text, filename=f"{self.name}.yaml",
                          checkpoint_hashes=self.record.get("checkpoint_hashes"))


def read_job(store: Store, job: str) -> StoredJob:
    """The job's record and spec copy; FileNotFoundError if the store has no such job."""
    record = read_job_record(store, job)
    return StoredJob(job, record, store.read_text(layout.job_spec_key(job)))


@dataclass
class JobOutputs:
    manifest_lines: int
    sheets: list[str] = field(default_factory=list)  # keys of the contact sheets written


def write_job_outputs(store: Store, job: str, x: str | None = None, y: str | None = None,
                      **sheet_options) -> JobOutputs:
    """The job's manifest and contact sheets, from the records in its store: at the end of every
    job (finish_job, `farm run`) and whenever `farm grid` rebuilds the sheets. Without x and y the
    sheets follow the spec's `grid:` (but no axis that is filtered on); sheet_options as in
    farm.sheets.iter_sheets. Raises ValueError for axes or filters the job does not have."""
    try:
        stored = read_job(store, job)
    except (FileNotFoundError, ValueError):  # records without a (readable) job record: plain sheets
        stored = None
    if x is None and y is None and stored is not None:
        filtered = sheet_options.get("filters") or {}
        x, y = (axis if axis not in filtered else None for axis in stored.grid)
    spec = _parsed_or_none(stored)
    lines = write_manifest(store, job)
    sheets = write_sheets(store, job, x, y, spec=spec, **sheet_options) if lines else []
    return JobOutputs(lines, sheets)


def _parsed_or_none(stored: StoredJob | None) -> JobSpec | None:
    """The job's parsed spec for the sheets' layout; None when it no longer parses (a spec made by
    another version): the sheets are still drawn, only without the prompt-matrix layout."""
    if stored is None:
        return None
    try:
        return stored.spec()
    except SpecError:
        return None


def finish_job(store: Store, ledger: Ledger, job: str) -> list[str]:
    """The job's last task has landed on the farm: write the manifest and the contact sheets, then
    mark the job finished in the live state. Called by exactly one worker (see
    Ledger.task_finished), and by `farm resume` of a job already whole. Returns the sheets' keys.

    A store that fails for good here (disk full, bucket gone) still ends the job: `finished, N
    failed` with the reason, never `running` forever; `farm resume` writes the outputs later."""
    try:
        outputs = write_job_outputs(store, job)
    except Exception as e:
        reason = f"manifest and sheets not written: {type(e).__name__}: {e}"[:500]
        log.error("job %s: %s", job, reason)
        ledger.set_status(job, f"finished, {ledger.failed_count(job)} failed", reason=reason,
                          finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        return []
    failed = ledger.failed_count(job)
    status = "complete" if not failed else f"finished, {failed} failed"
    ledger.set_status(job, status, sheets=json.dumps([store.describe(k) for k in outputs.sheets]),
                      finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return outputs.sheets
