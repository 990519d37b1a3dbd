"""Upscaler models (A1111's ESRGAN / RealESRGAN / SwinIR / DAT / HAT upscalers, ComfyUI's
upscale_models) through spandrel, which recognises the architecture from the weights' names and
shapes (farm/upscalers.py reads the same names without torch, for `farm models list`).

- Loading: `.safetensors` always; a pickled `.pth`/`.pt` only when the worker allows pickles, and
  then through the weights-only unpickler (worker/safe_load.py), never spandrel's own file loader
  (its `.pt` path runs TorchScript). A file spandrel does not recognise, or whose weights do not
  fit their architecture, is one ModelLoadError line naming it.
- Running: 8-bit RGB in and out; a large image in overlapping tiles (UPSCALE_TILE by memory mode),
  cross-faded where they overlap; a tile that runs out of GPU memory is halved and the image redone.
- `upscale` is A1111's upscaler rule: the model's scale, again (at most 3 passes) until the image
  reaches the size, then Lanczos to it.
- Loaded models are cached per file (path, size, mtime), UPSCALERS_CACHED at a time.

spandrel declares torchvision as a dependency but only two architectures seedfarm never loads
(LaMa, RestoreFormer) import it; without torchvision a stand-in module is in sys.modules while
spandrel imports (and removed after), whose functions say that architecture needs torchvision.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import threading
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from farm.hashes import sha256_file
from farm.model_files import ModelFileError
from farm.models import Registry
from farm.tunables import UPSCALE_TILE, UPSCALE_TILE_OVERLAP, UPSCALERS_CACHED
from worker.safe_load import ModelLoadError, load_pickle, refuse_pickle

MIN_TILE = 32  # halving a tile that runs out of memory stops here
MAX_PASSES = 3  # A1111: a 4x model reaches 8x in two passes; three at most
_TORCHVISION = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


def _needs_torchvision(*args, **kwargs):
    raise ModelLoadError("this model's architecture needs torchvision, which seedfarm's workers do not install")


def import_spandrel():
    """spandrel, imported with a stand-in for torchvision when torchvision is not installed."""
    if "spandrel" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return _import()
    standins = {name: types.ModuleType(name) for name in _TORCHVISION}
    functional = standins["torchvision.transforms.functional"]
    functional.rotate = functional.normalize = _needs_torchvision
    functional.InterpolationMode = types.SimpleNamespace(BILINEAR="bilinear", NEAREST="nearest")
    sys.modules.update(standins)
    try:
        return _import()
    finally:  # nothing else may take the stand-in for torchvision (transformers asks for it)
        for name in _TORCHVISION:
            sys.modules.pop(name, None)


def _import():
    try:
        import spandrel
    except ImportError as e:
        raise ModelLoadError(f"upscaler models need spandrel on this worker ({e}): "
                             "pip install --no-deps spandrel==0.4.2 (docs/models.md)") from None
    return spandrel


def read_weights(path: Path, allow_pickle: bool) -> dict:
    """The tensors of an upscaler file: safetensors, or a weights-only pickle when allowed."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for a corrupt file
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise ModelLoadError(f"{path.name}: not a readable safetensors file ({first[:200]})") from None
    if not allow_pickle:
        raise refuse_pickle(path, "upscaler model")
    return load_pickle(path)


class Upscaler:
    """A loaded upscaler model: `run(image)` is one pass at the model's own scale."""

    def __init__(self, name: str, descriptor, tile: int, overlap: int = UPSCALE_TILE_OVERLAP):
        self.name = name
        self.descriptor = descriptor
        self.scale = int(descriptor.scale)
        self.architecture = descriptor.architecture.name
        self.tile = tile
        self.overlap = overlap

    def run(self, image: Image.Image) -> Image.Image:
        """The image upscaled once by the model's scale (tiled when larger than a tile)."""
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        while True:
            try:
                with torch.inference_mode():
                    y = self.tiled(x)
                break
            except torch.cuda.OutOfMemoryError:
                if self.tile <= MIN_TILE:
                    raise
                # for this model from now on; a tile larger than the image was the whole image
                self.tile = max(MIN_TILE, min(self.tile, max(x.shape[2:])) // 2)
                torch.cuda.empty_cache()
        array = (y[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
        return Image.fromarray(array)

    def tiled(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) in [0, 1] on the CPU -> (1, 3, H*s, W*s), float32 on the CPU. Tiles of
        self.tile pixels overlap by self.overlap; each weighs 0 in the outer quarter of an overlap
        (its pixels there saw the tile's zero padding) and fades linearly across the middle half,
        so the weights of neighbours sum to 1."""
        _, _, height, width = x.shape
        s = self.scale
        overlap = min(self.overlap, self.tile // 2)  # a tile halved for memory keeps some of its own
        ys, xs = _starts(height, self.tile, overlap), _starts(width, self.tile, overlap)
        if len(ys) == 1 and len(xs) == 1:
            return self._model(x)
        out = torch.zeros((1, 3, height * s, width * s))
        total = torch.zeros((1, 1, height * s, width * s))
        wy, wx = _weights(ys, height, self.tile, s), _weights(xs, width, self.tile, s)
        for top, weight_y in zip(ys, wy):
            for left, weight_x in zip(xs, wx):
                patch = x[:, :, top : top + self.tile, left : left + self.tile]
                y = self._model(patch)
                weight = weight_y[:, None] * weight_x[None, :]
                rows, cols = slice(top * s, top * s + y.shape[2]), slice(left * s, left * s + y.shape[3])
                out[:, :, rows, cols] += y * weight
                total[:, :, rows, cols] += weight
        return out / total.clamp_min(1e-6)

    def _model(self, x: torch.Tensor) -> torch.Tensor:
        y = self.descriptor(x.to(self.descriptor.device, self.descriptor.dtype))
        return y.float().cpu()


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one side: as few tiles as cover it with at least `overlap` between
    neighbours, spread evenly."""
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _weights(starts: list[int], length: int, tile: int, scale: int) -> list[torch.Tensor]:
    """Each tile's blending weight along one side, at the output's resolution."""
    ends = [min(start + tile, length) for start in starts]
    out = []
    for i, (start, end) in enumerate(zip(starts, ends)):
        centres = torch.arange(start * scale, end * scale, dtype=torch.float32) + 0.5
        weight = torch.ones_like(centres)
        if i > 0:  # the overlap with the previous tile: [start, previous end)
            weight *= _fade_in(centres, start * scale, ends[i - 1] * scale)
        if i < len(starts) - 1:  # the overlap with the next: [next start, end)
            weight *= 1 - _fade_in(centres, starts[i + 1] * scale, end * scale)
        out.append(weight)
    return out


def _fade_in(centres: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """0 in the first quarter of [a, b), rising linearly to 1 at its last quarter."""
    quarter = (b - a) / 4
    return ((centres - a - quarter) / max(b - a - 2 * quarter, 1e-6)).clamp(0, 1)


FILTERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}


def upscale(image: Image.Image, scale: float, model: Upscaler | str) -> Image.Image:
    """A1111's upscaler rule: the size is the scaled one rounded down to multiples of 8; the model
    runs until the image reaches it (MAX_PASSES at most, or until a pass does not grow it), then
    Lanczos makes it exactly that size. `model` "Lanczos" or "Nearest": one resize by the scale
    with that filter, then the same."""
    width, height = int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8)
    if isinstance(model, str):
        resample = FILTERS[model]

        def run(im: Image.Image) -> Image.Image:
            return im.resize((int(im.width * scale), int(im.height * scale)), resample=resample)
    else:
        run = model.run
    for _ in range(MAX_PASSES):
        before = image.size
        image = run(image)
        if image.size == before or (image.width >= width and image.height >= height):
            break
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    return image


# ---- loading, cached ------------------------------------------------------------------------------

_cache: OrderedDict[tuple, Upscaler] = OrderedDict()
_lock = threading.Lock()


def load_upscaler(path: Path, allow_pickle: bool = False, device: str = "cpu", precision: str = "fp32",
                  tile: int = UPSCALE_TILE["high"]) -> Upscaler:
    """The upscaler model in `path`, loaded on `device` (cached). precision fp16/bf16 is used when
    the architecture supports it, else float32. ModelLoadError (one line) for a file that is
    refused, unreadable or not an upscaler spandrel knows."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as e:
        raise ModelLoadError(f"{path.name}: cannot read the file ({e.strerror or e})") from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, device, precision)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    model = Upscaler(path.stem, _descriptor(path, allow_pickle, device, precision), tile)
    with _lock:
        _cache[key] = model
        while len(_cache) > UPSCALERS_CACHED:
            _cache.popitem(last=False)
    return model


def _descriptor(path: Path, allow_pickle: bool, device: str, precision: str):
    spandrel = import_spandrel()
    state = read_weights(path, allow_pickle)
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise ModelLoadError(f"{path.name}: not an upscaler model of an architecture seedfarm knows "
                             "(spandrel recognised none from its weights' names)") from None
    except ModelLoadError:
        raise
    except Exception as e:  # the weights' shapes do not fit the architecture their names say
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(f"{path.name}: a broken upscaler model file ({first[:200]})") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.input_channels != 3 \
            or descriptor.output_channels != 3:
        raise ModelLoadError(f"{path.name}: a {descriptor.architecture.name} model, not an RGB image upscaler")
    dtype = torch.float32
    if device != "cpu":
        if precision == "fp16" and descriptor.supports_half:
            dtype = torch.float16
        elif precision in ("fp16", "bf16") and descriptor.supports_bfloat16:
            dtype = torch.bfloat16
    return descriptor.to(device, dtype).eval()


def tile_for(profile) -> int:
    """The tile side for a worker's memory profile (worker.memory.MemoryProfile)."""
    return UPSCALE_TILE.get(getattr(profile, "vram", "high"), UPSCALE_TILE["high"])


def task_upscaler(name: str, sha256: str | None) -> Upscaler:
    """The upscaler a task names, from this worker's models folders, checked against the hash the
    job was expanded with; loaded under this worker's memory profile and pickle setting."""
    from worker.context import context

    ctx = context()
    try:
        model = Registry(ctx.models_dir).resolve("upscaler", name, label="upscaler model")
        digest = sha256_file(model.path) if sha256 else None
    except (ModelFileError, OSError) as e:
        raise ModelLoadError(str(e)) from None
    if sha256 and digest != sha256:
        raise ModelLoadError(f"upscaler '{name}' at {model.path} has hash {digest[:10]}, but the job was "
                             f"expanded against {sha256[:10]}: copy the same file to this worker")
    profile = ctx.profile
    return load_upscaler(model.path, ctx.allow_pickle, getattr(profile, "device", "cpu"),
                         getattr(profile, "precision", "fp32"), tile_for(profile))
