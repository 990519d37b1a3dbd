"""What the review page shows, read through the Store interface (a folder or a bucket alike).

Records never change once written, so each job's records are read once and kept: a poll while a
job renders lists the record keys and reads only the new ones.
"""

from __future__ import annotations

import json
import threading

from farm.jobs import read_job_record
from farm.review.marks import image_stem, read_marks
from farm.sheets import axis_title, value_id, value_texts
from farm.store import Store, layout, record_keys


def list_jobs(store: Store) -> list[dict]:
    """Every job in the store with its progress: finished images against the job's total."""
    jobs: dict[str, dict] = {}
    for key in store.list_keys(""):
        job, path = layout.job_of(key)
        if layout.is_job_record_path(path):
            jobs.setdefault(job, {"job": job, "done": 0})
        elif layout.is_record_path(path):
            jobs.setdefault(job, {"job": job, "done": 0})["done"] += 1
    out = []
    for job, entry in jobs.items():
        try:
            record = read_job_record(store, job)
        except (FileNotFoundError, ValueError):
            continue  # records without a job record: not a job folder
        out.append({**entry, "name": record.get("name", job), "images": record.get("images", 0),
                    "created_at": record.get("created_at", "")})
    return sorted(out, key=lambda j: j["created_at"], reverse=True)


class Catalog:
    """A store's jobs as the page wants them, with each job's records cached."""

    def __init__(self, store: Store):
        self.store = store
        self._records: dict[str, dict[str, dict]] = {}  # job -> record key -> record
        self._lock = threading.Lock()

    def records(self, job: str) -> list[dict]:
        keys = record_keys(self.store, job)
        with self._lock:
            known = self._records.setdefault(job, {})
        for key in keys:
            if key not in known:
                try:
                    record = json.loads(self.store.read_bytes(key))
                except (FileNotFoundError, ValueError):
                    continue  # half-visible on a slow share: the next poll gets it
                with self._lock:
                    known[key] = record
        return sorted((known[k] for k in keys if k in known), key=lambda r: (r["index"], r["seed"]))

    def job(self, job: str) -> dict:
        """The job's axes, images and marks; FileNotFoundError when the store has no such job."""
        record = read_job_record(self.store, job)
        records = self.records(job)
        return job_payload(self.store, job, record, records, read_marks(self.store, job))


def job_payload(store: Store, job: str, record: dict, records: list[dict], marks: dict) -> dict:
    """Axes (every swept axis with the values seen so far, labelled as on the sheets) and, per
    image, the index of its value on each axis: the page never compares values itself."""
    names: list[str] = []
    for r in records:
        names += [k for k in r["axes"] if k not in names]
    axes, positions = [], {}
    for name in names:
        values = list({value_id(r["axes"].get(name)): r["axes"].get(name) for r in records}.values())
        positions[name] = {value_id(v): i for i, v in enumerate(values)}
        axes.append({"name": name, "title": axis_title(name), "labels": value_texts(name, values)})
    images = [
        {
            "id": image_stem(r), "image": r["image"], "seed": r["seed"], "parameters": r["parameters"],
            "worker": r.get("worker", ""), "seconds": round(r.get("render_seconds", 0), 2),
            "at": {n: positions[n][value_id(r["axes"].get(n))] for n in names},
            # its init image (img2img), as a path in the job folder like "image"
            **({"input": f"{layout.INPUTS}/{r['task']['init_image']}"} if r["task"].get("init_image") else {}),
        }
        for r in records
    ]
    try:
        spec = store.read_text(layout.job_spec_key(job))
    except FileNotFoundError:
        spec = ""
    return {
        "job": job, "name": record.get("name", job), "total": record.get("images", len(records)),
        "done": len(records), "grid": record.get("grid") or {}, "axes": axes, "images": images,
        "marks": marks, "spec": spec,
    }
