"""The VRAM a render needs, from what is on disk, torch-free: which workers can hold which tasks.

A render of a family built from parts (Flux, SD3.5, Z-Image ...) holds its denoiser, its text
encoders and its VAE, each at about its size on disk (farm/model_files.py reads how they are
stored): a bf16/fp16 file at its size, an fp8 or GGUF file at its size too (the worker keeps it
quantized and computes in its dtype, worker/families/base.py), an fp32 file at half its size on a
worker computing in fp16/bf16. On top of the weights come the activations and the VAE decode,
PIXELS_PER_FREE_GB per GB as for SD (farm/tunables.py). How much of the weights must sit on the
card at once depends on the worker's memory mode (worker/memory.py):

- `high`: everything;
- `med` (diffusers model CPU offload): one model at a time, so the largest of them;
- `low` (diffusers block-level group offload): the denoiser one block at a time (LOW_RESIDENT_FRACTION
  of it), but a text encoder or VAE whole: block-level offload splits only a model's top-level
  block lists, which transformers' encoders do not have (diffusers hooks/group_offloading.py).

SD1.5 and SDXL keep the rule routing always had (farm.families.pixel_budget): the family's
`weights_gb` plus the pixels, whatever the mode. Sizes are GiB, as workers report their VRAM.

docs/models.md ("VRAM") has the table of typical needs per family and precision (TYPICAL below),
with the source of each figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from farm.families import DEFAULT, DENOISER_PREFIX, family
from farm.model_files import (ModelFileError, _DTYPE_BYTES, folder_weights, is_diffusers_folder,
                              read_safetensors_header, read_tensor_shapes, weights_precision)
from farm.tunables import LOW_RESIDENT_FRACTION, PIXELS_PER_FREE_GB

GIB = 2**30
GB = 10**9  # file sizes as Hugging Face lists them
MODES = ("high", "med", "low")
_FLOAT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
# The denoiser of a diffusers folder, by component name; its other weights are encoders, or the VAE.
_DENOISERS = ("transformer", "unet", "prior")


@dataclass(frozen=True)
class Weights:
    """One model's weights as stored: bytes on disk and their precision (bf16, fp8_e4m3fn, Q4_K ...)."""

    bytes: int
    precision: str

    def held_gb(self, dtype: str = "fp16") -> float:
        """GiB it takes on a worker computing in `dtype`: a float file is cast to it (fp32 -> fp16
        halves), a quantized or fp8 one stays as stored."""
        size = self.bytes
        if self.precision in _FLOAT_BYTES and dtype in _FLOAT_BYTES:
            size = size * _FLOAT_BYTES[dtype] / _FLOAT_BYTES[self.precision]
        return size / GIB


@dataclass(frozen=True)
class Footprint:
    """What a checkpoint's render holds, model by model: the denoiser, the text encoders, the VAE."""

    family: str
    denoiser: Weights
    encoders: tuple[Weights, ...] = ()
    vae: Weights | None = None
    refiner: str | None = None  # an SDXL render's refiner family: its weights sit on the card too

    @property
    def precision(self) -> str:
        return self.denoiser.precision


@dataclass(frozen=True)
class Memory:
    """What a worker's card offers: its VRAM, its memory mode (high | med | low) and compute dtype."""

    vram_gb: float
    mode: str = "high"
    dtype: str = "fp16"

    def need_gb(self, fp: Footprint, pixels: int) -> float:
        return need_gb(fp, pixels, self.mode, self.dtype)

    def why_not(self, fp: Footprint, pixels: int, what: str) -> str | None:
        """None when the render fits, else one line saying what it needs and what is here."""
        need = self.need_gb(fp, pixels)
        if need <= self.vram_gb:
            return None
        return (f"{what} ({fp.family}, {fp.precision}) at {pixels} pixels needs ~{need:.1f} GB of VRAM, "
                f"more than this worker's {self.vram_gb:.1f} GB with --vram {self.mode}")


def has_parts(family_name: str) -> bool:
    """Whether the family is built from parts (the rules of this module), or an SD family (pixel_budget's)."""
    return bool((family(family_name) or DEFAULT).parts)


def need_gb(fp: Footprint, pixels: int, mode: str = "high", dtype: str = "fp16") -> float:
    """GiB of VRAM a render of `pixels` (width x height x batch) needs on a worker in `mode`
    computing in `dtype` (see the module docstring)."""
    activations = pixels / PIXELS_PER_FREE_GB
    facts = family(fp.family) or DEFAULT
    if not facts.parts:  # SD1.5, SDXL: routing's rule so far, whatever the mode; a refiner adds its own
        refiner = (family(fp.refiner) or DEFAULT).weights_gb if fp.refiner else 0.0
        return facts.weights_gb + refiner + activations
    denoiser = fp.denoiser.held_gb(dtype)
    others = [w.held_gb(dtype) for w in (*fp.encoders, fp.vae) if w is not None]
    if mode == "high":
        weights = denoiser + sum(others)
    elif mode == "med":
        weights = max([denoiser, *others])
    elif mode == "low":
        weights = max([denoiser * LOW_RESIDENT_FRACTION, *others])
    else:
        raise ValueError(f"memory mode {mode!r}: expected one of {', '.join(MODES)}")
    return weights + activations


def fits(fp: Footprint, pixels: int, vram_gb: float, mode: str = "high", dtype: str = "fp16") -> bool:
    return need_gb(fp, pixels, mode, dtype) <= vram_gb


# --- from the files ---------------------------------------------------------------------------

def file_weights(path: Path) -> Weights:
    """A whole model file (a denoiser, a text encoder, a VAE): its size on disk and precision."""
    path = Path(path)
    try:
        precision = weights_precision(read_tensor_shapes(path))
    except ModelFileError:
        precision = "?"  # a pickle: taken at its size
    return Weights(path.stat().st_size, precision)


def _tensor_bytes(dtype: str, shape: tuple[int, ...]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n * _DTYPE_BYTES.get(dtype, 2)


def footprint(family_name: str, checkpoint: Path, parts: dict[str, Path | None] | None = None) -> Footprint:
    """What a render of this checkpoint holds. `parts`: role -> the part's file, or None for a part
    inside the checkpoint (an all-in-one file); a role not given is taken from the checkpoint when
    it holds it, else left out. A diffusers folder holds its own parts. Raises ModelFileError (or
    OSError) for a file that cannot be read."""
    checkpoint = Path(checkpoint)
    if is_diffusers_folder(checkpoint):
        return _folder_footprint(family_name, checkpoint)
    given = {role: file_weights(path) for role, path in (parts or {}).items() if path is not None}
    return assemble(family_name, own_weights(family_name, checkpoint), given)


def own_weights(family_name: str, checkpoint: Path) -> dict[str, Weights]:
    """What a checkpoint file holds itself, by role: "denoiser", and each part of its family stored
    inside it (an all-in-one file). The depot records it at push (farm/depot.py), so that a worker
    that would fetch the file weighs it first. Raises ModelFileError (or OSError)."""
    checkpoint = Path(checkpoint)
    if checkpoint.suffix.lower() != ".safetensors":  # GGUF (a denoiser alone), a pickle: its size
        return {"denoiser": file_weights(checkpoint)}
    facts = family(family_name) or DEFAULT
    header = read_safetensors_header(checkpoint)
    tensors = {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"}
    inside: dict[str, dict] = {}  # role -> its tensors in this file
    for part in facts.parts:
        prefixes = part.in_checkpoint + (("first_stage_model.",) if part.kind == "vae" else ())
        inside[part.role] = {k: v for k, v in tensors.items() if k.startswith(prefixes)}
    taken = {k for found in inside.values() for k in found}
    rest = {k: v for k, v in tensors.items() if k not in taken}
    # an all-in-one SD file keeps its text encoders under other prefixes; they count as the denoiser's
    held = {"denoiser": Weights(sum(_tensor_bytes(*v) for v in rest.values()),
                                weights_precision({k: v for k, v in rest.items() if k.startswith(DENOISER_PREFIX)} or rest))}
    for role, found in inside.items():
        if found:
            held[role] = Weights(sum(_tensor_bytes(*v) for v in found.values()), weights_precision(found))
    return held


def assemble(family_name: str, own: dict[str, Weights], given: dict[str, Weights]) -> Footprint:
    """A render's footprint from the checkpoint's own weights (own_weights) and the parts given as
    files, role -> their weights; a part given neither way is left out."""
    encoders: list[Weights] = []
    vae = None
    for part in (family(family_name) or DEFAULT).parts:
        w = given.get(part.role) or own.get(part.role)
        if w is None:
            continue
        if part.kind == "vae":
            vae = w
        else:
            encoders.append(w)
    return Footprint(family_name, own["denoiser"], tuple(encoders), vae)


def _folder_footprint(family_name: str, folder: Path) -> Footprint:
    denoiser = Weights(0, "?")
    encoders, vae = [], None
    for component, files in folder_weights(folder).items():
        if not files:
            continue
        size = sum(f.stat().st_size for f in files)
        try:
            precision = weights_precision(read_tensor_shapes(files[0])) if files[0].suffix == ".safetensors" else "?"
        except ModelFileError:
            precision = "?"
        w = Weights(size, precision)
        if component in _DENOISERS:
            denoiser = w
        elif component == "vae":
            vae = w
        else:
            encoders.append(w)
    return Footprint(family_name, denoiser, tuple(encoders), vae)


# --- the typical files of each family (docs/models.md "VRAM" has each figure's source) ----------

# family -> precision -> its denoiser file in GB (10^9 bytes, as Hugging Face lists files).
TYPICAL_DENOISER_GB: dict[str, dict[str, float]] = {
    "Flux.1 [dev]": {"bf16": 23.8, "fp8_e4m3fn": 11.9, "Q8_0": 12.6, "Q4_K": 6.7},
    "Flux.1 [schnell]": {"bf16": 23.8, "fp8_e4m3fn": 11.9, "Q8_0": 12.6, "Q4_K": 6.7},
    "Flux.2 [klein] 4B": {"bf16": 7.8},
    "Flux.2 [klein] 9B": {"bf16": 18.2},
    "SD3.5 Large": {"bf16": 16.2},
    "SD3.5 Medium": {"bf16": 5.0},
    "Z-Image Turbo": {"bf16": 12.3},
}
# part role -> (GB, precision) of the file ComfyUI's example workflows use.
TYPICAL_PART_GB: dict[str, tuple[float, str]] = {
    "clip_l": (0.25, "fp16"), "clip_g": (1.39, "fp16"), "t5xxl": (9.79, "fp16"),
    "t5xxl_fp8": (4.89, "fp8_e4m3fn"), "qwen3_4b": (8.05, "bf16"), "qwen3_8b": (16.4, "bf16"),
    "vae": (0.34, "fp32"),
}


def typical_footprint(family_name: str, precision: str | None = None, t5: str = "t5xxl") -> Footprint:
    """The footprint of a family's usual files; precision None: its smallest denoiser in the table
    (what a coordinator without the files assumes: the most any worker could hope to hold).
    `t5`: "t5xxl" (fp16) or "t5xxl_fp8" for families with a T5 encoder."""
    facts = family(family_name) or DEFAULT
    sizes = TYPICAL_DENOISER_GB.get(family_name, {})
    if not sizes:
        return Footprint(family_name, Weights(int(facts.weights_gb * GIB), "fp16"))
    if precision is None:
        precision = min(sizes, key=sizes.get)
    encoders, vae = [], None
    for part in facts.parts:
        gb, stored = TYPICAL_PART_GB[t5 if part.role == "t5xxl" else part.role]
        w = Weights(int(gb * GB), stored)
        if part.kind == "vae":
            vae = w
        else:
            encoders.append(w)
    return Footprint(family_name, Weights(int(sizes[precision] * GB), precision), tuple(encoders), vae)


# --- at submit: tasks no live worker could hold ---------------------------------------------------

def worker_memory(w: dict) -> Memory | None:
    """A live worker's card from its heartbeat (farm/ledger.py); None for a CPU worker (no limit)."""
    try:
        vram = float(w.get("vram_gb") or 0)
    except ValueError:
        return None
    if w.get("gpu") == "cpu" or vram <= 0:
        return None
    return Memory(vram, w.get("profile") or "high", w.get("precision") or "fp16")


def unholdable(routes: dict, workers: list[dict], weigh) -> list[str]:
    """One line per checkpoint whose tasks no live worker could hold (a warning: workers may start
    later); [] when there is no live worker, or one without a VRAM limit (a CPU worker).
    `routes`: farm.messages.Route -> its task count; `weigh(route)`: its Footprint, or None when
    unknown (not weighed)."""
    cards = [(w, worker_memory(w)) for w in workers]
    if not cards or any(m is None for _, m in cards):
        return []
    w_big, big = max(cards, key=lambda c: c[1].vram_gb)
    worst: dict[str, tuple[float, int, int, Footprint]] = {}  # checkpoint -> need, pixels, tasks, footprint
    for route, count in routes.items():
        fp = weigh(route)
        if fp is None or any(m.need_gb(fp, route.pixels) <= m.vram_gb for _, m in cards):
            continue
        need = big.need_gb(fp, route.pixels)
        had = worst.get(route.checkpoint)
        tasks = count + (had[2] if had else 0)
        if had is None or need > had[0]:
            worst[route.checkpoint] = (need, route.pixels, tasks, fp)
        else:
            worst[route.checkpoint] = (*had[:2], tasks, had[3])
    lines = []
    for checkpoint, (need, pixels, tasks, fp) in worst.items():
        what = fp.family if fp.precision == "?" else f"{fp.family}, {fp.precision}"
        lines.append(f"{tasks} task(s) of '{checkpoint}' ({what}) need up to ~{need:.1f} GB of VRAM ({pixels} pixels "
                     f"per render); the largest live worker, {w_big.get('name', '?')}, has {big.vram_gb:.1f} GB with "
                     f"--vram {big.mode}: they wait for a worker that can hold them (more VRAM, --vram med or low, "
                     "or an fp8/GGUF file)")
    return lines
