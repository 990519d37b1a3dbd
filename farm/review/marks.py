"""Stars and rejects, shared by everyone reviewing the same store.

Each image's mark is an object of its own (farm/store/layout.py: mark_key), so two reviewers marking
different images never overwrite each other (no shared file is read, changed and written back). On
one image, the last click wins. No mark means no object.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from farm.store import Store
from farm.store.layout import mark_key, mark_stem, marks_prefix
from farm.store.layout import image_stem as stem_of_image

MARKS = ("star", "reject")


def image_stem(record: dict) -> str:
    """images/1000-abc.png -> 1000-abc: the name a mark is stored under."""
    return stem_of_image(record["image"])


def read_marks(store: Store, job: str) -> dict[str, str]:
    """stem -> 'star' | 'reject' for every marked image of the job."""
    marks = {}
    for key in store.list_keys(marks_prefix(job)):
        try:
            mark = json.loads(store.read_bytes(key)).get("mark")
        except (FileNotFoundError, ValueError, AttributeError):
            continue  # removed meanwhile, or not ours
        if mark in MARKS:
            marks[mark_stem(job, key)] = mark
    return marks


def set_mark(store: Store, job: str, stem: str, mark: str | None) -> None:
    """Star, reject, or (None) clear one image's mark."""
    if mark is None:
        store.delete(mark_key(job, stem))
        return
    if mark not in MARKS:
        raise ValueError(f"unknown mark '{mark}': use star, reject or none")
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    store.write_bytes(mark_key(job, stem), json.dumps({"mark": mark, "at": at}).encode("utf-8"))
