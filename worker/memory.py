"""Memory profiles: how a worker fits SD1.5/SDXL on cards from 8 to 24 GB (A1111's --medvram and
--lowvram, done with diffusers' offloading).

- `high`: the whole pipeline on the GPU (fastest).
- `med`:  one of text encoder / UNet / VAE on the GPU at a time (~ A1111 --medvram,
          diffusers `enable_model_cpu_offload`).
- `low`:  also the UNet block by block (~ A1111 --lowvram, diffusers block-level group offload).
- `auto`: picked from the card's VRAM (AUTO_VRAM_GB in farm/tunables.py, like the other numbers here).
Precision fp16 (default on a GPU), bf16 or fp32; a CPU-only worker always runs fp32 on the CPU.
VAE slicing is always on (bit-identical); VAE tiling only in med/low for renders above
TILE_ABOVE_PIXELS (it changes the image slightly, so a `high` worker never tiles).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from farm.families import pixel_budget
from farm.tunables import AUTO_VRAM_GB, CPU_BATCH_PIXELS, MAX_AUTO_BATCH, TILE_ABOVE_PIXELS

VRAM_MODES = ("auto", "high", "med", "low")
PRECISIONS = ("auto", "fp16", "bf16", "fp32")
ATTENTIONS = ("sdpa", "xformers")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class ProfileError(Exception):
    """A memory setting this host cannot honour; one line."""


@dataclass(frozen=True)
class MemoryProfile:
    vram: str  # high | med | low (auto already resolved)
    precision: str  # fp16 | bf16 | fp32
    attention: str  # sdpa | xformers
    vae_fp32: bool  # A1111 --no-half-vae
    device: str  # "cuda:0" ... or "cpu"
    vram_gb: float  # 0 on a CPU-only host
    auto: bool = False  # the mode came from `--vram auto`: a model that does not fit it may offload more

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    @property
    def offload(self) -> str | None:
        """None (all on the device), "model" (med) or "block" (low)."""
        return {"high": None, "med": "model", "low": "block"}[self.vram]

    def describe(self) -> str:
        vae = "fp32" if self.vae_fp32 or self.precision == "fp32" else self.precision
        return f"vram {self.vram}, {self.precision}, {self.attention} attention, VAE {vae}, device {self.device}"

    def as_info(self) -> dict:
        """For the heartbeat (`farm workers`; `farm submit` weighs tasks against live workers'
        vram_gb, profile and precision, farm/dispatch.py)."""
        return {"profile": self.vram, "precision": self.precision, "attention": self.attention,
                "offload": {None: "none", "model": "model", "block": "group"}[self.offload]}


def choose_profile(vram: str = "auto", precision: str = "auto", attention: str = "sdpa", vae_fp32: bool = False,
                   gpu: int | None = None, vram_gb: float | None = None) -> MemoryProfile:
    """The profile for this host. vram_gb None: read from the GPU (0 when there is none)."""
    for value, allowed, what in ((vram, VRAM_MODES, "vram"), (precision, PRECISIONS, "precision"),
                                 (attention, ATTENTIONS, "attention")):
        if value not in allowed:
            raise ProfileError(f"--{what} {value}: expected one of {', '.join(allowed)}")
    if vram_gb is None:
        vram_gb = _gpu_vram_gb(gpu)
    if vram_gb <= 0:  # CPU only: fp16 on a CPU is slow and poorly supported, offload needs a GPU
        return MemoryProfile("high", "fp32", "sdpa", False, "cpu", 0.0)
    auto = vram == "auto"
    if auto:
        vram = next(mode for floor, mode in AUTO_VRAM_GB if vram_gb >= floor)
    if precision == "auto":
        precision = "fp16"
    return MemoryProfile(vram, precision, attention, vae_fp32, f"cuda:{gpu or 0}", vram_gb, auto)


def profile_for(profile: MemoryProfile, family_name: str, footprint) -> MemoryProfile:
    """The profile one model loads under. With `--vram auto`, a model built from parts (Flux,
    SD3.5 ...) that does not fit the card in the profile's mode gets the lightest mode that holds
    it (farm/vram.py, for a 1-megapixel render): Flux.1 [dev] bf16 on a 24 GB card renders with
    model offload, Q8_0 without. A mode the user chose is kept."""
    from farm.vram import MODES, fits, has_parts

    if not profile.auto or footprint is None or not has_parts(family_name) or profile.vram_gb <= 0:
        return profile
    start = MODES.index(profile.vram)
    for mode in MODES[start:]:
        if fits(footprint, 1024 * 1024, profile.vram_gb, mode, profile.precision):
            return replace(profile, vram=mode)
    return replace(profile, vram=MODES[-1])


def _gpu_vram_gb(gpu: int | None) -> float:
    if not torch.cuda.is_available():
        return 0.0
    return torch.cuda.get_device_properties(gpu or 0).total_memory / 2**30


def apply_profile(pipe, profile: MemoryProfile):
    """Place a loaded (CPU) pipeline as the profile says. Returns the pipeline."""
    if profile.attention == "xformers":
        try:
            pipe.enable_xformers_memory_efficient_attention()
        except (ModuleNotFoundError, ImportError, ValueError) as e:
            raise ProfileError(f"--attention xformers: {(str(e).splitlines() or [''])[0]} (pip install xformers)") from None
    prepare_vae(pipe.vae, profile)
    return place(pipe, profile)


def prepare_vae(vae, profile: MemoryProfile) -> None:
    """The VAE's dtype (fp32 with --no-half-vae), the NaN guard, slicing."""
    from worker.vae import guard_decode

    vae.to(torch.float32 if profile.vae_fp32 else profile.dtype)
    guard_decode(vae)
    vae.enable_slicing()


def place(pipe, profile: MemoryProfile):
    """Move the pipeline to the device, or install the offload hooks (again, after a module swap)."""
    # Offload hooks raise on a host without an accelerator (diffusers' accelerate hooks): the profile
    # of a CPU-only host is always "high", so they are reached only with a GPU.
    if profile.offload == "model":
        pipe.enable_model_cpu_offload(device=profile.device)
    elif profile.offload == "block":
        pipe.enable_group_offload(onload_device=torch.device(profile.device), offload_type="block_level",
                                  num_blocks_per_group=1)
    else:
        pipe.to(profile.device)
    return pipe


def set_vae_tiling(pipe, profile: MemoryProfile, width: int, height: int) -> None:
    """Tile the VAE decode for big renders on offloading profiles only."""
    if profile.offload is not None and width * height > TILE_ABOVE_PIXELS:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()


def auto_max_batch(profile: MemoryProfile, family: str, width: int, height: int) -> int:
    """How many images of this size one diffusion call holds on this worker (at least 1), from the
    same per-card pixel budget that capability routing uses (farm/families.py); family: its name."""
    if profile.vram_gb <= 0:
        budget = CPU_BATCH_PIXELS
    else:
        budget = pixel_budget(profile.vram_gb, family)
    return max(1, min(MAX_AUTO_BATCH, budget // (width * height)))
