"""The store interface: a flat key -> bytes store, the same on a folder, a bucket or in memory.

Keys are always '/'-separated paths relative to the store root, the same on a folder and on an
S3 bucket (`s3://bucket/prefix`). Which key holds what is spelled in farm/store/layout.py.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

# Temp files of atomic writes start with this; listings skip them and keys may not use it.
TEMP_PREFIX = ".seedfarm-tmp-"
CHUNK = 1 << 20  # bytes per read of a streamed object: small enough to hash and write as it comes


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

    # Large objects (model files in the depot, farm/depot.py): streamed, never whole in memory.
    # The defaults suit the small in-memory store; the folder and S3 stores stream.

    def write_file(self, key: str, path, progress: Callable[[int], None] = lambda n: None) -> None:
        """Store a file's bytes under `key`, atomically; `progress(n)` after each n bytes sent."""
        data = Path(path).read_bytes()
        self.write_bytes(key, data)
        progress(len(data))

    def open_read(self, key: str) -> BinaryIO:
        """The object as a binary stream to read (into a buffer: readinto) and close, without
        holding it whole in memory; FileNotFoundError when there is none."""
        return io.BytesIO(self.read_bytes(key))

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
