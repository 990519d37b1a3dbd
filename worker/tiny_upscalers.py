"""Tiny random-weight upscaler models, written in their users' files' key layouts, for the tests and
the example specs (`farm models make-tiny DIR` writes them with the tiny checkpoint):

- ESRGAN, the original layout (`model.0.weight`, `model.1.sub.0.RDB1.conv1.0.weight` ...), 2x, as A1111
  users keep ESRGAN files in models/ESRGAN;
- ESRGAN in RealESRGAN's RRDBNet layout (`conv_first`, `body.0.rdb1.conv1`, `conv_body`, `conv_up1` ...),
  4x, in models/RealESRGAN; its pickle wrapped in `params_ema` as RealESRGAN_x4plus.pth is;
- RealESRGAN's SRVGGNetCompact (`body.N.weight`), 2x, in models/RealESRGAN (pickle: `params`, as
  realesr-general-x4v3.pth) and ComfyUI's models/upscale_models.

Each as `.safetensors` and as a pickled `.pth` (stem + "-pickled"). The weights are random (seeded),
8 features and one block: kilobytes, milliseconds per image.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from worker.upscalers import import_spandrel

FEATURES = 8


def _esrgan(scale: int) -> dict[str, torch.Tensor]:
    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    return ESRGAN(num_filters=FEATURES, num_blocks=1, scale=scale).state_dict()


def _compact(scale: int) -> dict[str, torch.Tensor]:
    import_spandrel()
    from spandrel.architectures.Compact import Compact

    return Compact(num_feat=FEATURES, num_conv=2, upscale=scale).state_dict()


def _realesrgan_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original ESRGAN names of a 4x RRDB net -> RealESRGAN's RRDBNet names."""
    blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"model\.1\.sub\.(\d+)\.RDB", k)))
    fixed = {"model.0": "conv_first", f"model.1.sub.{blocks}": "conv_body", "model.3": "conv_up1",
             "model.6": "conv_up2", "model.8": "conv_hr", "model.10": "conv_last"}
    out = {}
    for key, value in state.items():
        module, _, kind = key.rpartition(".")
        m = re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0", module)
        name = f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}" if m else fixed[module]
        out[f"{name}.{kind}"] = value
    return out


def _write(state: dict[str, torch.Tensor], folder: Path, stem: str, wrap: str | None = None) -> list[Path]:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    safetensors = folder / f"{stem}.safetensors"
    save_file(state, str(safetensors))
    pickled = folder / f"{stem}-pickled.pth"
    torch.save({wrap: state} if wrap else state, pickled)
    return [safetensors, pickled]


def write_tiny_upscalers(models_dir: Path) -> list[Path]:
    """Write every tiny upscaler under models_dir; returns the files."""
    models_dir = Path(models_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(13)
        esrgan2, esrgan4, compact = _esrgan(2), _esrgan(4), _compact(2)
    return [
        *_write(esrgan2, models_dir / "ESRGAN", "tiny-esrgan-2x"),
        *_write(_realesrgan_names(esrgan4), models_dir / "RealESRGAN", "tiny-realesrgan-x4plus", wrap="params_ema"),
        *_write(compact, models_dir / "RealESRGAN", "tiny-realesr-compact-x2", wrap="params"),
        *_write(compact, models_dir / "upscale_models", "tiny-compact-2x"),
    ]
