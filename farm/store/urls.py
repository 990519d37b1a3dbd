"""A store from what a person types: a folder path, a file:// URL, s3://bucket/prefix, or the
in-memory store of the tests (memory://NAME)."""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from farm.store.base import Store
from farm.store.local import LocalStore
from farm.store.memory import MemoryStore
from farm.store.s3 import S3Store

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")  # 2+ letters: 'C:\\x' is a path


def open_store(url: str | os.PathLike) -> Store:
    """A store from a folder path, a file:// URL, an s3://bucket/prefix URL or memory://NAME."""
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
    if name == "memory":
        return MemoryStore.open(text)
    raise ValueError(f"{text}: unsupported store URL scheme '{name}://'; use a folder, file:// or s3://")
