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


def store_place(url: str | os.PathLike) -> tuple[str, str, tuple[str, ...]]:
    """Where a store URL writes, without opening it: (kind, server, path parts). A folder is its
    absolute, normalised path (`..` resolved, links followed); s3 is the bucket plus the endpoint
    and region options, and its prefix. Raises ValueError for a URL no store reads."""
    text = os.fspath(url)
    scheme = _SCHEME.match(text)
    name = scheme.group(1).lower() if scheme else ""
    if name in ("", "file"):
        from pathlib import Path

        root = Path(open_store(text).root) if name else Path(text)
        parts = Path(os.path.realpath(root.expanduser())).parts
        return "file", "", tuple(parts)
    if name in ("s3", "memory"):
        parsed = urlparse(text)
        return name, f"{parsed.netloc}?{parsed.query}", tuple(p for p in parsed.path.split("/") if p)
    raise ValueError(f"{text}: unsupported store URL scheme '{name}://'")


def store_trusted(url: str, trusted: list[str]) -> bool:
    """Whether a store URL is one of `trusted` or inside one (a sub-folder, a longer s3 prefix):
    a queue message names its job's store, and a worker writes only where its owner said it may."""
    try:
        kind, server, parts = store_place(url)
    except (ValueError, OSError):
        return False
    for allowed in trusted:
        try:
            a_kind, a_server, a_parts = store_place(allowed)
        except (ValueError, OSError):
            continue
        if (kind, server) == (a_kind, a_server) and parts[: len(a_parts)] == a_parts:
            return True
    return False
