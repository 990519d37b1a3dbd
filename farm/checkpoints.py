"""Finding checkpoints in a models folder as A1111 and ComfyUI lay it out, and hashing them.

Pure Python (no torch), so the coordinator can check a spec's checkpoint names before queueing.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt")
# Where checkpoints live inside a models folder: A1111, then ComfyUI; the folder itself last.
CHECKPOINT_SUBDIRS = ("Stable-diffusion", "checkpoints", ".")


def checkpoint_dirs(models_dir: Path) -> list[tuple[Path, bool]]:
    """(folder, search subfolders?) pairs for a models folder or an A1111 install root. The
    models folder itself is searched only at its top level: its subfolders hold LoRAs, VAEs..."""
    models_dir = Path(models_dir)
    roots = [models_dir / "models", models_dir] if (models_dir / "models").is_dir() else [models_dir]
    found: list[tuple[Path, bool]] = []
    for root in roots:
        for sub in CHECKPOINT_SUBDIRS:
            d = (root / sub).resolve()
            if d.is_dir() and d not in [f for f, _ in found]:
                found.append((d, sub != "."))
    return found


def find_checkpoints(models_dir: Path) -> dict[str, Path]:
    """name -> file. The name is the file stem; files in subfolders are also reachable as
    'sub/stem', as A1111 shows them. The first folder in CHECKPOINT_SUBDIRS wins a clash."""
    found: dict[str, Path] = {}
    for d, recursive in checkpoint_dirs(models_dir):
        for f in sorted(d.rglob("*") if recursive else d.glob("*")):
            if f.suffix.lower() not in CHECKPOINT_SUFFIXES or not f.is_file():
                continue
            found.setdefault(f.relative_to(d).with_suffix("").as_posix(), f)
            found.setdefault(f.stem, f)
    return found


def resolve_checkpoint(name: str, models_dir: Path) -> Path:
    """The file for a checkpoint name, or ValueError with a did-you-mean and where it looked."""
    available = find_checkpoints(models_dir)
    key = str(name).removesuffix(".safetensors").removesuffix(".ckpt")
    if key in available:
        return available[key]
    where = ", ".join(str(d) for d, _ in checkpoint_dirs(models_dir)) or f"{models_dir} (missing)"
    guess = difflib.get_close_matches(key, list(available), n=1)
    hint = f" (did you mean '{guess[0]}'?)" if guess else ""
    message = f"unknown checkpoint '{name}'{hint}; looked in {where}"
    if not available:
        message += "; no checkpoints there (`farm models make-tiny DIR` writes a test model)"
    raise ValueError(message)


def _cache_file() -> Path:
    base = os.environ.get("FARM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "seedfarm"
    )
    return Path(base) / "hashes.json"


def sha256_file(path: Path) -> str:
    """Whole-file SHA-256 (A1111's checkpoint hash), cached by (path, size, mtime) so a 7 GB
    file is read once."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache_path = _cache_file()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    cache[key] = digest
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_path)
    except OSError:
        pass  # a read-only cache only costs time
    return digest


def short_hash(sha256: str | None) -> str | None:
    """A1111's `Model hash`: the first 10 hex digits of the file's SHA-256."""
    return sha256[:10] if sha256 else None
