"""Noise the way A1111 makes it: RNG sources, variation seeds, seed resize, and the per-step
noise generators (with A1111's ENSD).

Sources:
- "cpu": torch's CPU generator seeded with the seed (A1111's "CPU": the same noise on any hardware);
- "nv": the numbers an NVIDIA GPU's torch.randn gives for the seed (A1111's "NV"), computed on the
  CPU with Philox4x32-10, so a GPU-made A1111 seed reproduces on any box.
Every call starts from its seed alone, so an image's noise never depends on the batch around it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SOURCES = ("cpu", "nv")

# Philox4x32-10 constants (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_LOW32 = np.uint64(0xFFFFFFFF)
_TWO_POW_32_INV = np.float32(2.3283064e-10)


def _philox4x32(counter: list[np.ndarray], key: list[np.ndarray]) -> list[np.ndarray]:
    """Ten Philox rounds on uint32 lanes held in uint64 arrays (products of two 32-bit words fit)."""
    c, k = counter, key
    for _ in range(10):
        p0, p1 = c[0] * _M0, c[2] * _M1
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k[0], p1 & _LOW32, (p0 >> np.uint64(32)) ^ c[3] ^ k[1], p0 & _LOW32]
        k = [(k[0] + _W0) & _LOW32, (k[1] + _W1) & _LOW32]
    return c


def nv_randn(seed: int, shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
    """float32 normals as CUDA's torch.randn makes them: key = the 64-bit seed's two halves,
    counter = (call offset, 0, element index, 0), Box-Muller on outputs 0 and 1."""
    n = math.prod(shape)
    index = np.arange(n, dtype=np.uint64)
    zeros = np.zeros(n, dtype=np.uint64)
    counter = [zeros + np.uint64(offset), zeros, index, zeros]
    key = [zeros + np.uint64(seed & 0xFFFFFFFF), zeros + np.uint64((seed >> 32) & 0xFFFFFFFF)]
    out = _philox4x32(counter, key)
    u = out[0].astype(np.float32) * _TWO_POW_32_INV + _TWO_POW_32_INV / 2
    v = out[1].astype(np.float32) * (_TWO_POW_32_INV * np.float32(2 * np.pi)) + _TWO_POW_32_INV * np.float32(np.pi)
    radius = np.sqrt(np.float32(-2.0) * np.log(u))
    return (radius * np.sin(v)).astype(np.float32).reshape(shape)


def randn(seed: int, shape: tuple[int, ...], source: str = "cpu") -> torch.Tensor:
    """Standard normal noise (float32, on the CPU) for one seed from an A1111 RNG source."""
    if source == "cpu":
        return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
    if source == "nv":
        return torch.from_numpy(nv_randn(seed, tuple(shape)))
    raise ValueError(f"unknown RNG source '{source}'; valid: {', '.join(SOURCES)}")


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's variation-seed blend: spherical interpolation with the norm taken per (C, H) row
    over dim 1 of a (C, H, W) tensor; nearly parallel rows fall back to a linear blend."""
    low_n = low / torch.norm(low, dim=1, keepdim=True)
    high_n = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_n * high_n).sum(1)
    if dot.mean() > 0.9995:
        return low * (1 - t) + high * t
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    return (torch.sin((1.0 - t) * omega) / sin_omega).unsqueeze(1) * low + (
        torch.sin(t * omega) / sin_omega
    ).unsqueeze(1) * high


def image_noise(
    shape: tuple[int, int, int],
    seed: int,
    source: str = "cpu",
    subseed: int | None = None,
    subseed_strength: float = 0.0,
    resize_from: tuple[int, int] | None = None,
) -> torch.Tensor:
    """One image's starting latent noise (C, H, W) as A1111 makes it.

    Variation: slerp(subseed_strength, noise(seed), noise(subseed)). Seed resize from (W, H) in
    pixels: the noise is made at that size's latent shape and pasted centred (cropped if larger)
    over the seed's own noise of the real size, so a composition found at one size survives at a
    nearby size."""
    made = shape
    if resize_from is not None and resize_from[0] > 0 and resize_from[1] > 0:
        made = (shape[0], resize_from[1] // 8, resize_from[0] // 8)
    noise = randn(seed, made, source)
    if subseed is not None and subseed_strength:
        noise = slerp(subseed_strength, noise, randn(subseed, made, source))
    if made == shape:
        return noise
    out = randn(seed, shape, source)
    h, w = min(made[1], shape[1]), min(made[2], shape[2])
    src_y, src_x = (made[1] - h) // 2, (made[2] - w) // 2
    dst_y, dst_x = (shape[1] - h) // 2, (shape[2] - w) // 2
    out[:, dst_y:dst_y + h, dst_x:dst_x + w] = noise[:, src_y:src_y + h, src_x:src_x + w]
    return out


def step_generator(seed: int, shape: tuple[int, ...], ensd: int = 0) -> torch.Generator:
    """An image's generator for the per-step noise of ancestral/SDE samplers (and DDIM with eta).

    Without ENSD, A1111 keeps drawing from the generator that made the starting noise; seedfarm's
    is seeded with the seed and moved past one draw of the starting noise's size, so the step noise
    never replays the "cpu" starting noise (and images rendered before RNG sources existed stay
    the same). With A1111's "Eta noise seed delta" the generator is made afresh from seed + ENSD
    once the starting noise is drawn (A1111's modules/rng.py, ImageRNG.first)."""
    if ensd:
        return torch.Generator("cpu").manual_seed((seed + ensd) % 2**64)
    generator = torch.Generator("cpu").manual_seed(seed)
    torch.randn((1, *shape), generator=generator)
    return generator
