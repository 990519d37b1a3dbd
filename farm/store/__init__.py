"""Where finished images go: the store interface and its backends, the job layout, image records.

    base.py     the Store interface and check_key
    local.py    a folder (or a mounted share)         s3.py      an S3-compatible bucket
    memory.py   in this process, for unit tests        urls.py    open_store(URL or path)
    layout.py   every key of a job, spelled once       records.py image records and the manifest
"""

from farm.store.base import TEMP_PREFIX, Store, check_key
from farm.store.layout import (
    image_key,
    job_record_key,
    job_spec_key,
    manifest_key,
    mark_key,
    record_key,
    sheet_key,
)
from farm.store.local import LocalStore
from farm.store.memory import MemoryStore
from farm.store.records import image_record, is_done, load_records, record_keys, save_image, write_manifest
from farm.store.s3 import S3Store
from farm.store.urls import open_store

__all__ = [
    "TEMP_PREFIX", "LocalStore", "MemoryStore", "S3Store", "Store", "check_key", "image_key", "image_record",
    "is_done", "job_record_key", "job_spec_key", "load_records", "manifest_key", "mark_key", "open_store",
    "record_key", "record_keys", "save_image", "sheet_key", "write_manifest",
]
