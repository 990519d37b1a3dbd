"""Finished images in a store: each image's record, written next to its PNG, and the manifest.

Several workers on several PCs finish images at the same moment, and a task can be delivered twice
(a worker switched off after rendering but before acknowledging). So nothing shared is ever appended
to: each finished image writes its own small record object next to its PNG, and writing the same
object twice is harmless, both on a folder (atomic rename) and on S3 (a PUT replaces). The job's
manifest.jsonl is derived from the records by `write_manifest`, and is rebuilt whenever wanted.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from farm.hashes import short_hash
from farm.store import layout
from farm.store.base import Store
from farm.task import RenderTask


def image_record(
    task: RenderTask, seed: int, infotext: str, render_seconds: float, worker: str
) -> dict:
    """The small JSON record of one finished image (also its manifest line)."""
    axes = dict(task.axes)
    if "seed" in axes or task.batch_size > 1:
        axes["seed"] = seed  # in a batch each image has its own seed: the grids need it
    return {
        "task_id": task.id,
        "job": task.job,
        "index": task.index,
        "seed": seed,
        "image": layout.image_path(task.image_stem(seed)),
        "parameters": infotext,
        "task": task.model_dump(),
        "axes": axes,
        "model_hash": short_hash(task.checkpoint_hash),
        "render_seconds": render_seconds,
        "worker": worker,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
    }


def save_image(store: Store, task: RenderTask, seed: int, png: bytes, record: dict) -> None:
    """The PNG first, then its record: a record exists only for a complete image."""
    stem = task.image_stem(seed)
    store.write_bytes(layout.image_key(task.job, stem), png)
    store.write_bytes(layout.record_key(task.job, stem), json.dumps(record, ensure_ascii=False).encode("utf-8"))


def is_done(store: Store, task: RenderTask) -> bool:
    """True when every image of the task has its record."""
    return all(store.exists(layout.record_key(task.job, task.image_stem(seed))) for seed in task.seeds)


def record_keys(store: Store, job: str) -> list[str]:
    """The keys of the job's image records, listed once."""
    return [key for key in store.list_keys(layout.records_prefix(job)) if layout.is_record_key(key)]


def load_records(store: Store, job: str) -> list[dict]:
    """The job's image records, one per (task, seed), sorted by (index, seed): expansion order."""
    found: dict[tuple[str, int], dict] = {}
    for key in record_keys(store, job):
        try:
            record = json.loads(store.read_bytes(key))
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"{store.describe(key)}: not a valid image record ({error})") from None
        found[(record["task_id"], record["seed"])] = record
    return sorted(found.values(), key=lambda r: (r["index"], r["seed"]))


def write_manifest(store: Store, job: str) -> int:
    """Build {job}/manifest.jsonl from the records, atomically; returns the number of lines."""
    records = load_records(store, job)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    store.write_bytes(layout.manifest_key(job), text.encode("utf-8"))
    return len(records)
