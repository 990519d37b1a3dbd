"""Finding checkpoints by name in the users' model folders (through the model registry,
farm/models.py). Pure Python (no torch), so the coordinator can check a spec's checkpoint names
before queueing.
"""

from __future__ import annotations

from pathlib import Path

from farm.models import Registry


def find_checkpoints(models_dir: Path) -> dict[str, Path]:
    """name -> file for the checkpoints under a models folder (or A1111/ComfyUI install root)."""
    return {name: m.path for name, m in Registry(models_dir).files("checkpoint").items()}


def resolve_checkpoint(name: str, models_dir: Path) -> Path:
    """The file (or diffusers folder) for a checkpoint reference (stem, short hash, sha256, path,
    folder name), or ValueError with a did-you-mean and where it looked."""
    return Registry(models_dir).resolve("checkpoint", name).path
