"""Hashing model files: A1111's hashes (whole-file SHA-256, the LoRA "addnet" hash) and a
diffusers folder's.

Pure Python (no torch), so the coordinator can pin a spec's checkpoints before queueing. Hashes are
cached by (path, size, mtime) so a 7 GB file is read once.

A diffusers folder has no A1111 hash; its hash here is `folder_hash`: the SHA-256 of a list of the
files that load (model_index.json, each component's configs and weights) with their sizes and own
SHA-256s. Two copies of the same model hash alike wherever they lie, the first hash costs one read
of the weights (cached per file like any checkpoint's), and a changed weight or config changes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from farm.model_files import folder_files


def _cache_file() -> Path:
    base = os.environ.get("FARM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "seedfarm"
    )
    return Path(base) / "hashes.json"


def _cached(path: Path, algorithm: str, compute) -> str:
    """compute(path), cached in one JSON file by (algorithm, path, size, mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    if algorithm != "sha256":  # sha256 keys keep their original form: existing caches stay valid
        key = f"{algorithm}|{key}"
    cache_path = _cache_file()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = compute(path)
    cache[key] = digest
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_path)
    except OSError:
        pass  # a read-only cache only costs time
    return digest


def remember_sha256(path: Path, digest: str) -> None:
    """Record a file's sha256 computed elsewhere (while it was downloaded and verified), so that the
    next sha256_file of it does not read it again."""
    _cached(path, "sha256", lambda p: digest)


def _sha256_from(path: Path, offset: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    """Whole-file SHA-256 (A1111's checkpoint, VAE and TI hash). For a diffusers folder, its
    folder_hash: every caller that pins a checkpoint's weights (the spec, the worker's check before
    rendering, the worker's offer to the queues) then works for folders as for files."""
    if Path(path).is_dir():
        return folder_hash(path)
    return _cached(path, "sha256", lambda p: _sha256_from(p, 0))


def folder_hash(folder: Path) -> str:
    """seedfarm's hash of a diffusers folder (A1111 has none): SHA-256 of the lines
    `RELATIVE_PATH SIZE SHA256` of the files that load (farm.model_files.folder_files), sorted."""
    folder = Path(folder)
    lines = []
    for f in folder_files(folder):
        lines.append(f"{f.relative_to(folder).as_posix()} {f.stat().st_size} {sha256_file(f)}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def addnet_file_hash(path: Path) -> str:
    """A1111's "addnet" LoRA hash: SHA-256 of a safetensors file after its header (8 + n bytes),
    so editing the metadata does not change it."""

    def compute(p: Path) -> str:
        with open(p, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
        return _sha256_from(p, 8 + n)

    return _cached(path, "addnet", compute)


def short_hash(sha256: str | None) -> str | None:
    """A1111's `Model hash`: the first 10 hex digits of the file's SHA-256."""
    return sha256[:10] if sha256 else None
