"""The in-memory store: a real backend that lives in this process, for unit tests.

It keeps the contract of the other backends (checked keys, whole-object writes, sorted prefix
listings, FileNotFoundError for a missing object, no error deleting one twice), so code tested on
it behaves the same on a folder or a bucket. `memory://NAME` opens the live store of that name
(code that reopens a store from its URL, as the render task does, sees the same objects); a store
nobody holds any more is gone.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterator

from farm.store.base import Store, check_key

SCHEME = "memory://"
_live: weakref.WeakValueDictionary[str, MemoryStore] = weakref.WeakValueDictionary()
_live_lock = threading.Lock()
_numbers = itertools.count(1)


class MemoryStore(Store):
    """A dict of key -> bytes behind a lock (writers on several threads, as in a worker)."""

    def __init__(self, name: str | None = None):
        self.name = name or f"store-{next(_numbers)}"
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()
        with _live_lock:
            if self.name in _live:
                raise ValueError(f"{SCHEME}{self.name} exists already: open it with open_store")
            _live[self.name] = self

    @classmethod
    def open(cls, url: str) -> MemoryStore:
        """The live store of a memory:// URL, or a new empty one under that name."""
        name = url.removeprefix(SCHEME).strip("/")
        if not name:
            raise ValueError(f"{url}: expected {SCHEME}NAME")
        with _live_lock:
            store = _live.get(name)
        return store if store is not None else cls(name)

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.name}"

    def write_bytes(self, key: str, data: bytes) -> None:
        data = bytes(data)  # a copy: a caller's bytearray changed later does not change the object
        with self._lock:
            self._objects[check_key(key)] = data

    def read_bytes(self, key: str) -> bytes:
        with self._lock:
            data = self._objects.get(check_key(key))
        if data is None:
            raise FileNotFoundError(self.describe(key))
        return data

    def exists(self, key: str) -> bool:
        with self._lock:
            return check_key(key) in self._objects

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        with self._lock:
            keys = sorted(k for k in self._objects if k.startswith(prefix))
        return iter(keys)

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(check_key(key), None)

    def describe(self, key: str = "") -> str:
        return f"{self.url}/{check_key(key)}" if key else self.url
