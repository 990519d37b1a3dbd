"""Reading pickled model files (.ckpt/.pt/.bin) without ever running code from them.

A pickle can name any Python callable, and plain unpickling calls it: a downloaded .ckpt can run
anything. These files are read only when the worker allows pickles, and then only through
`torch.load(weights_only=True)`, whose unpickler accepts tensors and plain containers and refuses
everything else before calling it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from farm.models import PICKLE_SUFFIXES


class ModelLoadError(Exception):
    """A model file could not be loaded (or was refused); the message is one line and names the
    file. The render loop (worker/render_loop.py) turns it into a failed task; the worker stays up."""


def is_pickle(path: Path) -> bool:
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def refuse_pickle(path: Path, what: str) -> ModelLoadError:
    return ModelLoadError(
        f"{Path(path).name}: a pickled {what}; only .safetensors files load unless the worker allows "
        "pickles (farm worker --allow-pickle, or convert it to .safetensors)"
    )


def load_pickle(path: Path) -> dict:
    """The tensors of a pickled file, through the weights-only unpickler; a nested "state_dict" is
    unwrapped (old training checkpoints keep their weights there)."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).splitlines()[0] if str(e) else "not a weights-only pickle"
        for line in str(e).splitlines():  # torch names the refused global on a later line
            if "GLOBAL" in line or "Unsupported" in line:
                reason = line.strip()
                break
        raise ModelLoadError(f"{path.name}: refused: the file wants to run code when loaded ({reason[:200]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(f"{path.name}: not a readable pickled model file ({first[:200]})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path.name}: holds a {type(data).__name__}, not a dict of weights")
    return data
