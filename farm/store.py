"""Where finished images go: the store interface, the local-folder backend, and a job's layout in it.

Several workers on several PCs finish images at the same moment, and a task can be delivered twice
(a worker switched off after rendering but before acknowledging). So nothing shared is ever appended
to: each finished image writes its own small record object next to its PNG, and writing the same
object twice is harmless, both on a folder (atomic rename) and on S3 (a PUT replaces). The job's
manifest.jsonl is derived from the records by `write_manifest`, and is rebuilt whenever wanted.

Keys are always '/'-separated paths relative to the store root, the same on a folder and on an
S3 bucket (`s3://bucket/prefix`).

Job layout, relative to the store root:
    {job}/job.yaml              the spec as submitted
    {job}/job.json              the job record
    {job}/images/{stem}.png     one PNG per image, infotext in its `parameters` chunk
    {job}/records/{stem}.json   one record per finished image; its existence means "done"
    {job}/manifest.jsonl        one line per image, built from the records
    {job}/sheets/{name}.png     contact sheets
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse
from urllib.request import url2pathname

from farm.checkpoints import short_hash
from farm.task import RenderTask

# Temp files of atomic writes start with this; listings skip them and keys may not use it.
TEMP_PREFIX = ".seedfarm-tmp-"


def check_key(key: str) -> str:
    """A key is a relative '/'-separated path with no empty, '.' or '..' parts."""
    parts = key.split("/")
    if (
        not key
        or "\\" in key
        or any(p in ("", ".", "..") for p in parts)
        or any(p.startswith(TEMP_PREFIX) for p in parts)
    ):
        raise ValueError(f"bad store key {key!r}: expected a relative path like 'job/images/x.png'")
    return key


class Store(ABC):
    """A flat key -> bytes store. Writes are atomic: a reader sees the old object, the new one, or
    none, never a part."""

    @property
    @abstractmethod
    def url(self) -> str: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError when there is none."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with `prefix` (a plain string prefix, as on S3), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; no error when it is already gone (as on S3)."""

    @abstractmethod
    def describe(self, key: str = "") -> str:
        """Where the object lives, for people: a path, or a URL."""

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class LocalStore(Store):
    """A folder on this machine (or a network share mounted here)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().absolute()

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A fresh random name per write: no two processes, threads or PCs on a share can collide.
        temp = target.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(temp, flags, 0o666)  # the umask decides the final mode, as for any new file
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # the data is on disk before the name says it is complete
            _replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        # Walk only the deepest folder the prefix names, not the whole store.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.path(folder) if folder else self.root
        if not start.is_dir():
            return iter(())
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            base = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    continue
                key = name if base == "." else f"{base}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def describe(self, key: str = "") -> str:
        return str(self.path(key)) if key else str(self.root)


def _replace(temp: Path, target: Path) -> None:
    """os.replace, retried briefly on Windows, where a reader holding the target open blocks it."""
    for attempt in range(20):
        try:
            os.replace(temp, target)
            return
        except PermissionError:
            if sys.platform != "win32" or attempt == 19:
                raise
            time.sleep(0.05)


_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")  # 2+ letters: 'C:\\x' is a path


def open_store(url: str | os.PathLike) -> Store:
    """A store from a folder path, a file:// URL or an s3://bucket/prefix URL."""
    text = os.fspath(url)
    scheme = _SCHEME.match(text)
    if not scheme:
        return LocalStore(text)
    name = scheme.group(1).lower()
    if name == "file":
        parsed = urlparse(text)
        path = url2pathname(unquote(parsed.path))
        if parsed.netloc and parsed.netloc != "localhost":
            path = f"//{parsed.netloc}{path}"  # a UNC share: file://server/share/x
        return LocalStore(path)
    if name == "s3":
        return S3Store(text)
    raise ValueError(f"{text}: unsupported store URL scheme '{name}://'; use a folder, file:// or s3://")


class S3Store(Store):
    """An S3-compatible bucket: AWS, MinIO, R2, B2 ... `s3://bucket/prefix`, with optional
    `?endpoint_url=http://host:9000&region=eu-west-1` for non-AWS services. Credentials come from
    boto3's usual places (AWS_* env vars, ~/.aws profiles, instance roles); AWS_ENDPOINT_URL works too.
    A PUT replaces an object whole, so every write is atomic."""

    def __init__(self, url: str):
        import boto3  # here, so a local-folder farm never pays for importing boto3
        from botocore.config import Config

        parsed = urlparse(url)
        if not parsed.netloc:
            raise ValueError(f"{url}: expected s3://BUCKET/PREFIX")
        self._url = url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        query = parse_qs(parsed.query)
        unknown = set(query) - {"endpoint_url", "region"}
        if unknown:
            raise ValueError(f"{url}: unknown option(s) {', '.join(sorted(unknown))}; known: endpoint_url, region")
        # botocore retries throttling and connection errors with exponential backoff.
        config = Config(retries={"max_attempts": 8, "mode": "standard"}, connect_timeout=10, read_timeout=60)
        self.client = boto3.client(
            "s3",
            endpoint_url=query.get("endpoint_url", [None])[0],
            region_name=query.get("region", [None])[0],
            config=config,
        )

    @property
    def url(self) -> str:
        return self._url

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(self.describe(key)) from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + prefix)
        for page in pages:  # S3 lists keys in sorted order
            for item in page.get("Contents", []):
                yield item["Key"][len(base):]

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def describe(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self._key(key) if key else self.prefix}"


# ---- the job layout -------------------------------------------------------------------------


def job_spec_key(job: str) -> str:
    return f"{job}/job.yaml"


def job_record_key(job: str) -> str:
    return f"{job}/job.json"


def image_key(job: str, stem: str) -> str:
    return f"{job}/images/{stem}.png"


def record_key(job: str, stem: str) -> str:
    return f"{job}/records/{stem}.json"


def manifest_key(job: str) -> str:
    return f"{job}/manifest.jsonl"


def sheet_key(job: str, name: str) -> str:
    return f"{job}/sheets/{name}.png"


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
        "image": f"images/{task.image_stem(seed)}.png",
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
    store.write_bytes(image_key(task.job, stem), png)
    store.write_bytes(record_key(task.job, stem), json.dumps(record, ensure_ascii=False).encode("utf-8"))


def is_done(store: Store, task: RenderTask) -> bool:
    """True when every image of the task has its record."""
    return all(store.exists(record_key(task.job, task.image_stem(seed))) for seed in task.seeds)


def load_records(store: Store, job: str) -> list[dict]:
    """The job's image records, one per (task, seed), sorted by (index, seed): expansion order."""
    found: dict[tuple[str, int], dict] = {}
    for key in store.list_keys(f"{job}/records/"):
        if not key.endswith(".json"):
            continue
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
    store.write_bytes(manifest_key(job), text.encode("utf-8"))
    return len(records)
