"""The local-folder store: a folder on this machine, or a network share mounted here."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from farm.store.base import CHUNK, TEMP_PREFIX, Store, check_key


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
        self._write(key, lambda f: f.write(data))

    def write_file(self, key: str, path, progress: Callable[[int], None] = lambda n: None) -> None:
        def copy(f) -> None:
            with open(path, "rb") as source:
                for block in iter(lambda: source.read(CHUNK * 8), b""):
                    f.write(block)
                    progress(len(block))

        self._write(key, copy)

    def open_read(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def _write(self, key: str, fill: Callable) -> None:
        """The object's bytes by fill(file) into a temp file beside it, then renamed."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A fresh random name per write: no two processes, threads or PCs on a share can collide.
        temp = target.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(temp, flags, 0o666)  # the umask decides the final mode, as for any new file
        try:
            with os.fdopen(fd, "wb") as f:
                fill(f)
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
