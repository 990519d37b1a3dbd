"""Loading single-file (A1111-layout) checkpoints offline, and keeping them loaded.

Every checkpoint loads through `StableDiffusionPipeline.from_single_file(path, config=DIR)` with a
local config folder, so nothing is ever fetched from the hub (diffusers.md section 1):
- DIR is `<stem>.config/` beside the checkpoint when it exists (a checkpoint with a non-standard
  architecture, such as the tiny test model, carries its own diffusers config folder);
- else the shipped SD1.5 folder `configs/sd15` (override the configs root with FARM_CONFIGS_DIR).

Only `.safetensors` is loaded for now; pickled `.ckpt`/`.pt` files are never unpickled here.
Anything that goes wrong while loading becomes one `ModelLoadError` line naming the file.
"""

from __future__ import annotations

import gc
import json
import os
import struct
import threading
import time
from collections import OrderedDict
from pathlib import Path

import torch

# transformers warns at import that torchvision is absent (we do not want it); say only errors.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CLIP_VOCAB_SIZE = 49408
SD15_CONFIG = "sd15"
_UNET_KEY = "model.diffusion_model."


class ModelLoadError(Exception):
    """A checkpoint could not be loaded; the message is one line and names the file."""


def configs_dir() -> Path:
    """The folder holding the offline model configs (sd15/, ...). FARM_CONFIGS_DIR wins; else the
    repo's configs/ next to this package (an editable install or a source checkout)."""
    env = os.environ.get("FARM_CONFIGS_DIR")
    candidates = [Path(env)] if env else [Path(__file__).resolve().parent.parent / "configs"]
    for d in candidates:
        if (d / SD15_CONFIG / "model_index.json").is_file():
            return d
    where = f"FARM_CONFIGS_DIR={env}" if env else str(candidates[0])
    raise ModelLoadError(
        f"model config folder not found ({where} has no {SD15_CONFIG}/model_index.json); "
        "set FARM_CONFIGS_DIR to the seedfarm repo's configs/ folder"
    )


def config_dir_for(checkpoint: Path) -> Path:
    """`<stem>.config/` beside the checkpoint if present, else the shipped SD1.5 configs."""
    own = checkpoint.with_name(checkpoint.stem + ".config")
    if (own / "model_index.json").is_file():
        return own
    return configs_dir() / SD15_CONFIG


def default_device_dtype() -> tuple[torch.device, torch.dtype]:
    """CUDA fp16 when there is a GPU, else CPU fp32 (fp16 on CPU is slow and poorly supported)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.float16
    return torch.device("cpu"), torch.float32


def _read_safetensors_header(path: Path) -> dict:
    """Check the file is a complete safetensors file before handing it to diffusers, so a truncated
    download gets a clear message instead of a deep traceback. Returns the header."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelLoadError(f"{path.name}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100_000_000):
            raise ModelLoadError(f"{path.name}: not a safetensors file or truncated (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError):
            raise ModelLoadError(f"{path.name}: corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path.name}: corrupt safetensors header")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise ModelLoadError(f"{path.name}: truncated ({size} of {expected} bytes); re-download or re-copy it")
    return header


def _check_layout(path: Path, header: dict, has_own_config: bool) -> None:
    """Catch the common wrong files (LoRA, VAE, SDXL) with a sentence rather than a KeyError."""
    keys = [k for k in header if k != "__metadata__"]
    if not any(k.startswith(_UNET_KEY) for k in keys):
        raise ModelLoadError(
            f"{path.name}: not a Stable Diffusion checkpoint in A1111 layout (no {_UNET_KEY}* weights); "
            "is it a LoRA, VAE or embedding?"
        )
    if has_own_config:
        return
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        raise ModelLoadError(f"{path.name}: SDXL checkpoints are not supported yet")
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise ModelLoadError(f"{path.name}: SD 2.x checkpoints are not supported yet")


def load_pipeline(
    checkpoint_path: Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
):
    """A ready StableDiffusionPipeline for an A1111-layout `.safetensors` checkpoint, offline."""
    path = Path(checkpoint_path)
    if not path.is_file():
        raise ModelLoadError(f"{path.name}: checkpoint file not found at {path}")
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(
            f"{path.name}: only .safetensors checkpoints can be loaded for now "
            "(pickled .ckpt/.pt support is a later issue; convert it to .safetensors)"
        )
    config = config_dir_for(path)
    try:
        header = _read_safetensors_header(path)
    except OSError as e:
        raise ModelLoadError(f"{path.name}: cannot read the file ({e.strerror or e})") from None
    _check_layout(path, header, has_own_config=config.name.endswith(".config"))

    default_device, default_dtype = default_device_dtype()
    device = torch.device(device) if device is not None else default_device
    dtype = dtype or default_dtype

    # Imported here: `import diffusers` costs seconds and the coordinator never needs it.
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    # Our own log line says what loaded and how long it took; diffusers' bars and notices are noise.
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path),
            config=str(config),
            local_files_only=True,
            feature_extractor=None,
            safety_checker=None,
            requires_safety_checker=False,
            torch_dtype=dtype,
        )
    except Exception as e:  # diffusers raises many types; the user needs one line naming the file
        raise ModelLoadError(_load_failure(path, config, e)) from e

    # A missing weight stays on the meta device and only fails later, mid-render.
    missing = [n for n, p in _named_tensors(pipe) if p.device.type == "meta"]
    if missing:
        raise ModelLoadError(
            f"{path.name}: {len(missing)} weights missing (e.g. {missing[0]}); the file does not match {config}"
        )
    # transformers 5 silently builds a 3-token placeholder tokenizer when the files are missing.
    if pipe.tokenizer is None or len(pipe.tokenizer) != CLIP_VOCAB_SIZE:
        n = None if pipe.tokenizer is None else len(pipe.tokenizer)
        raise ModelLoadError(
            f"{path.name}: tokenizer from {config}/tokenizer has {n} tokens, expected {CLIP_VOCAB_SIZE}; "
            "the tokenizer files are missing or broken"
        )
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_failure(path: Path, config: Path, error: Exception) -> str:
    """One line saying why diffusers could not build the pipeline from this file."""
    reason = (str(error).strip().splitlines() or [""])[0]
    hint = (
        "; a checkpoint with another architecture needs its own diffusers config folder "
        f"beside it ({path.stem}.config/)"
        if not config.name.endswith(".config")
        else ""
    )
    if "meta tensor" in reason:  # a weight the config expects is not in the file
        return f"{path.name}: weights missing for the model described by {config}{hint}"
    if "expected shape" in reason:
        reason = reason.split(". If you want")[0].replace("Cannot load  because ", "")
        return f"{path.name}: weight shapes do not match the model described by {config} ({reason}){hint}"
    return f"{path.name}: could not load checkpoint ({type(error).__name__}: {reason[:300]})"


def _named_tensors(pipe):
    for name in ("unet", "vae", "text_encoder"):
        module = getattr(pipe, name, None)
        if module is not None:
            for n, p in module.named_parameters():
                yield f"{name}.{n}", p


class PipelineCache:
    """Loaded pipelines per checkpoint file, least recently used evicted beyond `keep`.

    A worker renders many tasks on one checkpoint, so the load (seconds for a real model) is paid
    once. A file replaced on disk (new size or mtime) is loaded again.
    """

    def __init__(self, keep: int = 1, loader=load_pipeline):
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.keep = keep
        self._loader = loader
        self._pipes: OrderedDict[Path, tuple[tuple[int, int], object]] = OrderedDict()
        self.load_seconds: dict[Path, float] = {}  # seconds the last load of each file took
        self._lock = threading.Lock()

    def get(self, checkpoint_path: Path):
        path = Path(checkpoint_path).resolve()
        try:
            st = path.stat()
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = (-1, -1)  # the loader reports the missing file
        with self._lock:
            entry = self._pipes.get(path)
            if entry is not None and entry[0] == stamp:
                self._pipes.move_to_end(path)
                return entry[1]
            self._pipes.pop(path, None)
            # Evict before loading so two big models are never in (GPU) memory at once.
            while len(self._pipes) >= self.keep:
                self._pipes.popitem(last=False)
                _free_memory()
            start = time.perf_counter()
            pipe = self._loader(path)
            self.load_seconds[path] = time.perf_counter() - start
            self._pipes[path] = (stamp, pipe)
            return pipe

    def __contains__(self, checkpoint_path: Path) -> bool:
        return Path(checkpoint_path).resolve() in self._pipes

    def loaded(self) -> list[Path]:
        """Checkpoint files held now, least recently used first."""
        return list(self._pipes)

    def clear(self) -> None:
        with self._lock:
            self._pipes.clear()
            _free_memory()


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
