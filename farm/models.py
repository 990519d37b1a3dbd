"""The model registry: every checkpoint, LoRA, VAE and embedding in the users' model folders.

Pure Python (no torch): the coordinator resolves and hashes names with it before queueing, and
`farm models list` runs on any box. A root may be an A1111 install (`models/Stable-diffusion`,
`models/Lora`, `models/VAE`, `embeddings/`), its `models/` folder, or a ComfyUI `models/` folder
(`checkpoints`, `loras`, `vae`, `embeddings`); several roots are searched in order.

A model is referenced by file stem (`Deliberate_v2`), `sub/stem` (A1111 shows files in subfolders so),
A1111 short hash (10 hex), full sha256, or a path. Hashes follow A1111 (modules/hashes.py) and are
cached by (path, size, mtime) in farm/hashes.py. Families: farm/families.py.

A checkpoint may also be a diffusers folder (`model_index.json` plus one subfolder per component, as
`save_pretrained` or `hf download` write it): it is one model, named by its folder, and the files
inside it are never listed on their own. A hub id (`org/name`) that is not in the models folders is
left to the worker, which fetches it from the Hugging Face hub (worker/pipelines.py).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from farm.families import NOT_A_CHECKPOINT, file_family
from farm.hashes import addnet_file_hash, sha256_file
from farm.model_files import (MODEL_INDEX, MODEL_SUFFIXES, ModelFileError, folder_files, is_diffusers_folder,
                              read_safetensors_header, read_tensor_shapes, weights_precision)
from farm.upscalers import upscaler_architecture

KINDS = ("checkpoint", "lora", "vae", "embedding", "text_encoder", "upscaler")
# Sub-folders holding each kind: A1111 names, then ComfyUI names ("." = the models folder itself,
# where some users keep checkpoints; only its top level is searched).
KIND_DIRS = {
    # ComfyUI's diffusion_models/ (and its old name unet/) hold a denoiser alone (Flux, SD3.5 ...);
    # its diffusers/ holds folders
    "checkpoint": ("Stable-diffusion", "checkpoints", "diffusion_models", "unet", "diffusers", "."),
    "lora": ("Lora", "LyCORIS", "loras"),
    "vae": ("VAE", "vae"),
    "embedding": ("embeddings",),
    # ComfyUI's text_encoders/ (old name clip/), Forge's text_encoder/
    "text_encoder": ("text_encoders", "clip", "text_encoder"),
    # upscaler models (farm/upscalers.py): A1111's folders per architecture, ComfyUI's upscale_models/
    "upscaler": ("ESRGAN", "RealESRGAN", "DAT", "HAT", "SwinIR", "upscale_models"),
}
SUFFIXES = {
    "checkpoint": (".safetensors", ".gguf", ".ckpt", ".pt"),
    "lora": (".safetensors", ".ckpt", ".pt"),
    "vae": (".safetensors", ".ckpt", ".pt"),
    "embedding": (".safetensors", ".pt", ".bin"),
    "text_encoder": (".safetensors",),
    "upscaler": (".safetensors", ".pth", ".pt"),
}
PICKLE_SUFFIXES = (".ckpt", ".pt", ".bin", ".pth")
# `org/name`, as the Hugging Face hub names repositories.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class ModelFile:
    kind: str
    name: str  # file stem, or sub/stem for a file in a subfolder
    path: Path

    @property
    def size(self) -> int:
        if self.path.is_dir():  # a diffusers folder: the files that load
            return sum(f.stat().st_size for f in folder_files(self.path))
        return self.path.stat().st_size

    def sha256(self) -> str:
        return sha256_file(self.path)

    def a1111_hash(self) -> str:
        """The hash A1111 writes for this kind: `Model hash`/`VAE hash` 10 hex, LoRA/TI 12 hex."""
        if self.kind == "lora":
            return lora_hash(self.path)[:12]
        return self.sha256()[: 10 if self.kind in ("checkpoint", "vae", "text_encoder") else 12]

    def family(self) -> str:
        """Its model family; for an upscaler, its architecture (ESRGAN, DAT ...) when readable."""
        if self.kind == "upscaler":
            return upscaler_architecture(self.path)
        return file_family(self.path, self.kind)

    def precision(self) -> str:
        """What most of its weights are stored as (bf16, fp8_e4m3fn, Q8_0 ...); "?" for a pickle
        or a diffusers folder (not read here)."""
        if self.path.is_dir() or self.path.suffix.lower() not in MODEL_SUFFIXES:
            return "?"
        return weights_precision(read_tensor_shapes(self.path))


def _roots(root: Path) -> list[Path]:
    """The folders a root stands for: an A1111 install holds models/ and embeddings/ side by side;
    given A1111's models/ itself, its embeddings/ is next door."""
    root = Path(root)
    if (root / "models").is_dir():
        return [root / "models", root]
    return [root, root.parent] if (root.parent / "embeddings").is_dir() else [root]


def kind_dirs(roots: list[Path], kind: str) -> list[tuple[Path, bool]]:
    """(folder, search subfolders?) for one kind, in search order, each folder once."""
    found: list[tuple[Path, bool]] = []
    for root in roots:
        for base in _roots(root):
            for sub in KIND_DIRS[kind]:
                if sub == "." and base != _roots(root)[0]:
                    continue  # the install root itself holds no checkpoints
                d = (base / sub).resolve()
                if d.is_dir() and d not in [f for f, _ in found]:
                    found.append((d, sub != "."))
    return found


def _scan(d: Path, recursive: bool, folders: bool) -> list[Path]:
    """The files under d, sorted; with `folders`, a folder holding a model_index.json is one entry
    (a diffusers checkpoint) and its own files are not listed: they are parts of that model."""
    out: list[Path] = []
    for top, dirs, names in os.walk(d):  # like rglob, not into symlinked folders (no loops)
        top_path = Path(top)
        if folders:
            for name in list(dirs):
                sub = top_path / name
                if (sub / MODEL_INDEX).is_file():
                    dirs.remove(name)
                    if is_diffusers_folder(sub):
                        out.append(sub)
        out += [top_path / n for n in names]
        if not recursive:
            break
    return sorted(out)


class Registry:
    """The model files under some roots, by kind. Scans on each call: folders are small and change
    while a worker runs (a user drops in a new LoRA)."""

    def __init__(self, roots: str | Path | list[Path]):
        # One string may name several roots joined by os.pathsep, as --models / FARM_MODELS do.
        if not isinstance(roots, list):
            roots = [r for r in str(roots).split(os.pathsep) if r]
        self.roots = [Path(r) for r in roots]

    def files(self, kind: str) -> dict[str, ModelFile]:
        """name -> file; names are stems and sub/stems; the first folder in search order wins."""
        found: dict[str, ModelFile] = {}
        for d, recursive in kind_dirs(self.roots, kind):
            for f in _scan(d, recursive, folders=kind == "checkpoint"):
                if f.is_dir():  # a diffusers folder: named by its folder, as sub/folder too
                    for name in (f.relative_to(d).as_posix(), f.name):
                        found.setdefault(name, ModelFile(kind, name, f))
                    continue
                if f.suffix.lower() not in SUFFIXES[kind] or not f.is_file() or f.name.endswith(".tmp"):
                    continue
                if kind == "checkpoint" and not recursive and _looks_like_other_kind(f):
                    continue
                for name in (f.relative_to(d).with_suffix("").as_posix(), f.stem):
                    found.setdefault(name, ModelFile(kind, name, f))
        return found

    def unique_files(self, kind: str) -> list[ModelFile]:
        seen, out = set(), []
        for m in self.files(kind).values():
            if m.path not in seen:
                seen.add(m.path)
                out.append(m)
        return out

    def resolve(self, kind: str, ref: str, label: str | None = None) -> ModelFile:
        """The file for a reference (stem, sub/stem, short hash, sha256 or path; for checkpoints
        also a diffusers folder's name or path), or ModelFileError with a did-you-mean and where it
        looked. `label` names the kind in that message ("LoRA" rather than "lora")."""
        ref = str(ref).strip()
        path = Path(ref).expanduser()
        if path.suffix.lower() in SUFFIXES[kind] and path.is_file():
            return ModelFile(kind, path.stem, path.resolve())
        files = self.files(kind)
        key = re.sub(r"\.(safetensors|gguf|ckpt|pt|pth|bin)$", "", ref)
        if key in files:
            return files[key]
        # A diffusers folder given as a path; after the names, so a name never means a folder
        # that happens to sit in the current directory.
        if kind == "checkpoint" and is_diffusers_folder(path):
            return ModelFile(kind, path.resolve().name, path.resolve())
        if re.fullmatch(r"[0-9a-fA-F]{8,64}", ref):  # a hash: A1111's short one or a full sha256
            for m in self.unique_files(kind):
                if m.sha256().startswith(ref.lower()) or (kind == "lora" and lora_hash(m.path).startswith(ref.lower())):
                    return m
        guess = difflib.get_close_matches(key, list(files), n=1)
        hint = f" (did you mean '{guess[0]}'?)" if guess else ""
        message = f"unknown {label or kind} '{ref}'{hint}; looked in {self.where(kind)}"
        if kind == "checkpoint" and not files:
            message += "; no checkpoints there (`farm models make-tiny DIR` writes a test model)"
        raise ModelFileError(message)

    def where(self, kind: str) -> str:
        """The folders searched for a kind, for messages."""
        found = ", ".join(str(d) for d, _ in kind_dirs(self.roots, kind))
        return found or ", ".join(map(str, self.roots)) + " (no folder for it)"

    def is_hub_id(self, ref: str) -> bool:
        """`org/name` that names no checkpoint here and is no `sub/stem` of these folders (a typo in
        one of those stays an unknown name): the worker fetches it from the Hugging Face hub."""
        ref = str(ref).strip()
        if not HUB_ID.fullmatch(ref) or Path(ref).suffix.lower() in SUFFIXES["checkpoint"]:
            return False
        org = ref.split("/")[0]
        return not any((d / org).is_dir() for d, recursive in kind_dirs(self.roots, "checkpoint") if recursive)


def _looks_like_other_kind(path: Path) -> bool:
    """A file at the top of a models folder may be a LoRA or VAE a user left there."""
    try:
        return file_family(path, "checkpoint") == NOT_A_CHECKPOINT
    except ModelFileError:
        return False


def lora_hash(path: Path) -> str:
    """A1111's LoRA hash: `sshs_model_hash` from the metadata if present, else the "addnet" hash
    (sha256 of the tensor data after the header); whole-file sha256 for other formats."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return sha256_file(path)
    meta = read_safetensors_header(path).get("__metadata__") or {}
    if isinstance(meta.get("sshs_model_hash"), str) and meta["sshs_model_hash"]:
        return meta["sshs_model_hash"]
    return addnet_file_hash(path)


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
