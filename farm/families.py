"""Model families (SD1.5, SDXL ...): the torch-free facts about each, in one table.

Each family says how its files are recognised (a checkpoint's tensor names, a diffusers folder's
pipeline class, its LoRAs' and embeddings' tensor names), its default render size, how much VRAM
its weights take (the pixel budget of routing and batching) and which shipped config folder
(configs/<folder>) loads its single-file checkpoints. `name` is what job records, `farm models
list`, the spec's `family:NAME` hashes and messages write; it is never spelled another way.
Infotext: no family writes anything of its own today (A1111 writes the same keys for both).

The worker's side of a family (pipeline classes, denoiser, text encoders, LoRA key mapping, the
tiny test model) is worker/families/<family>.py. Adding a family: a row here, a module there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from farm.model_files import read_model_index, read_safetensors_header
from farm.tunables import PIXELS_PER_FREE_GB

NOT_A_CHECKPOINT = "not a checkpoint"  # a file without UNet weights (a LoRA, a VAE ...)
UNKNOWN = "?"  # the file does not say (a pickle, a VAE, no models folder at hand)


@dataclass(frozen=True)
class Family:
    name: str  # "SD1.5", "SDXL": as records and messages write it
    display: str  # for people
    checkpoint_keys: tuple[str, ...]  # an A1111 checkpoint holding a tensor named so is this family
    pipeline_classes: tuple[str, ...] = ()  # a diffusers folder's model_index.json `_class_name`
    lora_keys: tuple[str, ...] = ()  # kohya text-encoder prefixes only this family's LoRAs have
    embedding_parts: tuple[str, ...] = ("clip_l",)  # an embedding file's tensors, one per encoder
    default_size: str | None = None  # a job's size when not given (A1111's default); None: SD1.5's
    weights_gb: float = 2.5  # VRAM its fp16 weights take (with some room), for the pixel budget
    config_folder: str | None = None  # configs/<folder> for its single files; None: not rendered


# In recognition order: the first family whose checkpoint_keys match a checkpoint's tensor names
# wins (diffusers' own single-file probes); SD1.5, the last, matches any checkpoint.
FAMILIES = (
    Family("SDXL", "Stable Diffusion XL", ("conditioner.embedders.1.",), ("StableDiffusionXLPipeline",),
           lora_keys=("lora_te1_", "lora_te2_"), embedding_parts=("clip_l", "clip_g"),
           default_size="1024x1024", weights_gb=7.0, config_folder="sdxl"),
    Family("SDXL refiner", "Stable Diffusion XL refiner", ("conditioner.embedders.0.model.",),
           ("StableDiffusionXLImg2ImgPipeline",), weights_gb=7.0),
    Family("SD2", "Stable Diffusion 2", ("cond_stage_model.model.",)),
    Family("SD1.5", "Stable Diffusion 1.5", ("",), ("StableDiffusionPipeline",), lora_keys=("lora_te_",),
           default_size="512x512", config_folder="sd15"),
)
BY_NAME = {f.name: f for f in FAMILIES}
DEFAULT = BY_NAME["SD1.5"]  # what a file that does not say is taken for (sizes, budgets)


def family(name: str) -> Family | None:
    """The family called `name` ("SD1.5", "SDXL" ...); None for another name (e.g. "Flux" from a
    diffusers folder's class, or "?")."""
    return BY_NAME.get(name)


def header_family(keys: Iterable[str]) -> str:
    """A checkpoint's family name from its tensor names, or NOT_A_CHECKPOINT."""
    keys = list(keys)
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        return NOT_A_CHECKPOINT
    for f in FAMILIES:
        if any(k.startswith(f.checkpoint_keys) for k in keys):
            return f.name
    return DEFAULT.name


def folder_family(folder: Path) -> str:
    """A diffusers folder's family from the pipeline class in model_index.json (SD2 shares SD1.5's
    class: its text encoder is 1024 wide); another pipeline shows its class name (e.g. Flux)."""
    class_name = read_model_index(folder)["_class_name"]
    name = next((f.name for f in FAMILIES if class_name in f.pipeline_classes), class_name.removesuffix("Pipeline"))
    if name == "SD1.5":
        try:
            width = json.loads((Path(folder) / "text_encoder" / "config.json").read_text()).get("hidden_size")
        except (OSError, ValueError, AttributeError):
            width = None
        if width == 1024:
            name = "SD2"
    return name


def file_family(path: Path, kind: str) -> str:
    """The family a model file belongs to, from its safetensors header only; UNKNOWN for pickles
    (their names cannot be read without unpickling) and when the file does not say. A diffusers
    folder's is read from its model_index.json (folder_family). kind: checkpoint, lora, embedding
    or vae (SD1.5 and SDXL VAEs have the same tensors: always UNKNOWN)."""
    path = Path(path)
    if kind == "checkpoint" and path.is_dir():
        return folder_family(path)
    if path.suffix.lower() != ".safetensors":
        return UNKNOWN
    header = read_safetensors_header(path)
    keys = [k for k in header if k != "__metadata__"]
    if kind == "checkpoint":
        return header_family(keys)
    if kind == "lora":
        for f in FAMILIES:  # SDXL's lora_te1_/lora_te2_ before SD1.5's lora_te_
            if f.lora_keys and any(k.startswith(f.lora_keys) for k in keys):
                return f.name
        base = str((header.get("__metadata__") or {}).get("ss_base_model_version", ""))  # kohya's metadata
        return "SDXL" if "xl" in base.lower() else "SD1.5" if base.startswith("sd_v1") else UNKNOWN
    if kind == "embedding":
        for f in FAMILIES:  # a file with a second encoder's part (SDXL's clip_g) is that family's
            if len(f.embedding_parts) > 1 and f.embedding_parts[-1] in keys:
                return f.name
        return DEFAULT.name
    return UNKNOWN


def checkpoint_family(name: str, files: dict[str, Path], known: dict[str, str]) -> str:
    """The family of checkpoint `name`: from its file when the models folder is at hand (`files`:
    name -> path), else from a job record's 'family:NAME' entry in `known`; UNKNOWN when neither
    says (a broken file fails on the worker, with its own message)."""
    if name not in files:
        return known.get(f"family:{name}", UNKNOWN)
    try:
        return file_family(files[name], "checkpoint")
    except (ValueError, OSError):  # ModelFileError is a ValueError, and so is a bad model_index.json
        return UNKNOWN


def default_size(family_names: Iterable[str]) -> str:
    """The default `size` of a job on checkpoints of these families: the family's own when they
    are all one known family, else SD1.5's 512x512 (without a models folder or a job record the
    families are unknown: give `size` for SDXL jobs)."""
    names = set(family_names)
    only = family(names.pop()) if len(names) == 1 else None
    return (only.default_size if only else None) or DEFAULT.default_size


def pixel_budget(vram_gb: float, family_name: str = DEFAULT.name) -> int:
    """A conservative guess of how many pixels per render fit a card in the default memory mode,
    used when a worker is not told `--max-pixels`: the family's weights take `weights_gb`; the rest
    holds PIXELS_PER_FREE_GB (about 0.5 megapixel per GB) for activations and the VAE decode. A
    family not in the table is budgeted as SD1.5."""
    weights = (family(family_name) or DEFAULT).weights_gb
    return max(0, int((vram_gb - weights) * PIXELS_PER_FREE_GB))
