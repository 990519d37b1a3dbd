"""The model registry: every checkpoint, LoRA, VAE and embedding in the users' model folders.

Pure Python (no torch): the coordinator resolves and hashes names with it before queueing, and
`farm models list` runs on any box. A root may be an A1111 install (`models/Stable-diffusion`,
`models/Lora`, `models/VAE`, `embeddings/`), its `models/` folder, or a ComfyUI `models/` folder
(`checkpoints`, `loras`, `vae`, `embeddings`); several roots are searched in order.

A model is referenced by file stem (`Deliberate_v2`), `sub/stem` (A1111 shows files in subfolders so),
A1111 short hash (10 hex), full sha256, or a path. Hashes follow A1111 (a1111.md section 2) and are
cached by (path, size, mtime) in farm/checkpoints.py.

A checkpoint may also be a diffusers folder (`model_index.json` plus one subfolder per component, as
`save_pretrained` or `hf download` write it): it is one model, named by its folder, and the files
inside it are never listed on their own. A hub id (`org/name`) that is not in the models folders is
left to the worker, which fetches it from the Hugging Face hub (worker/pipelines.py).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from farm.checkpoints import addnet_file_hash, sha256_file

KINDS = ("checkpoint", "lora", "vae", "embedding")
# Sub-folders holding each kind: A1111 names, then ComfyUI names ("." = the models folder itself,
# where some users keep checkpoints; only its top level is searched).
KIND_DIRS = {
    "checkpoint": ("Stable-diffusion", "checkpoints", "diffusers", "."),  # ComfyUI's diffusers/: folders
    "lora": ("Lora", "LyCORIS", "loras"),
    "vae": ("VAE", "vae"),
    "embedding": ("embeddings",),
}
SUFFIXES = {
    "checkpoint": (".safetensors", ".ckpt", ".pt"),
    "lora": (".safetensors", ".ckpt", ".pt"),
    "vae": (".safetensors", ".ckpt", ".pt"),
    "embedding": (".safetensors", ".pt", ".bin"),
}
PICKLE_SUFFIXES = (".ckpt", ".pt", ".bin", ".pth")
MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header

# Diffusers folders: the index file that makes a folder one model, the pipeline classes we render
# (anything else is listed with its class name and refused when loaded), and the components a
# worker never loads (A1111 has no safety checker), so their files are not part of the model's hash.
MODEL_INDEX = "model_index.json"
FOLDER_FAMILIES = {
    "StableDiffusionPipeline": "SD1.5",
    "StableDiffusionXLPipeline": "SDXL",
    "StableDiffusionXLImg2ImgPipeline": "SDXL refiner",
}
UNUSED_COMPONENTS = ("safety_checker", "feature_extractor")
# `org/name`, as the Hugging Face hub names repositories.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


class ModelFileError(ValueError):
    """A model file that cannot be used; the message is one line and names the file."""


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
        return self.sha256()[: 10 if self.kind in ("checkpoint", "vae") else 12]

    def family(self) -> str:
        return file_family(self.path, self.kind)


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


def is_diffusers_folder(path: Path) -> bool:
    """A folder holding a diffusers pipeline. `NAME.config/` folders also have a model_index.json,
    but they are the configs of the single-file checkpoint beside them (worker/pipelines.py)."""
    path = Path(path)
    return path.is_dir() and (path / MODEL_INDEX).is_file() and not path.name.endswith(".config")


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
        key = re.sub(r"\.(safetensors|ckpt|pt|bin)$", "", ref)
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
        return file_family(path, "checkpoint") == "not a checkpoint"
    except ModelFileError:
        return False


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, checked against the file's size, so a truncated
    download or a header that lies gets one clear line instead of a deep traceback."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{path.name}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, MAX_HEADER):
                raise ModelFileError(f"{path.name}: not a safetensors file or truncated (bad header length)")
            raw = f.read(n)
    except OSError as e:
        raise ModelFileError(f"{path.name}: cannot read the file ({e.strerror or e})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise ModelFileError(f"{path.name}: corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path.name}: corrupt safetensors header")
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            start, stop = info["data_offsets"]
            count = 1
            for dim in info["shape"]:
                count *= dim
            width = _DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(f"{path.name}: corrupt safetensors header (bad entry for {key})") from None
        if stop - start != count * width or start < 0:
            raise ModelFileError(f"{path.name}: corrupt safetensors header ({key}: size does not match its shape)")
        end = max(end, stop)
    expected = 8 + n + end
    if size < expected:
        raise ModelFileError(f"{path.name}: truncated ({size} of {expected} bytes); re-download or re-copy it")
    return header


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


def checkpoint_family(keys: list[str]) -> str:
    """SD1.5 / SDXL / ... from a checkpoint's tensor names (diffusers' own probes, diffusers.md §1)."""
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        return "not a checkpoint"
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "SDXL"
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        return "SDXL refiner"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "SD2"
    return "SD1.5"


def file_family(path: Path, kind: str) -> str:
    """The model family a file belongs to, from its safetensors header only; '?' for pickles
    (their names cannot be read without unpickling) and when the file does not say. A diffusers
    folder's is read from its model_index.json (folder_family)."""
    path = Path(path)
    if kind == "checkpoint" and path.is_dir():
        return folder_family(path)
    if path.suffix.lower() != ".safetensors":
        return "?"
    header = read_safetensors_header(path)
    keys = [k for k in header if k != "__metadata__"]
    if kind == "checkpoint":
        return checkpoint_family(keys)
    if kind == "lora":
        if any(k.startswith(("lora_te2_", "lora_te1_")) for k in keys):
            return "SDXL"
        if any(k.startswith("lora_te_") for k in keys):
            return "SD1.5"
        base = str((header.get("__metadata__") or {}).get("ss_base_model_version", ""))
        return "SDXL" if "xl" in base.lower() else "SD1.5" if base.startswith("sd_v1") else "?"
    if kind == "embedding":
        return "SDXL" if "clip_g" in keys else "SD1.5"
    return "?"  # a VAE: SD1.5 and SDXL VAEs have the same tensors


def read_model_index(folder: Path) -> dict:
    """A diffusers folder's model_index.json, or one line saying what is wrong with it."""
    folder = Path(folder)
    try:
        index = json.loads((folder / MODEL_INDEX).read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelFileError(f"{folder.name}: cannot read {MODEL_INDEX} ({e.strerror or e})") from None
    except (UnicodeDecodeError, ValueError):
        raise ModelFileError(f"{folder.name}: {MODEL_INDEX} is not valid JSON") from None
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise ModelFileError(f"{folder.name}: {MODEL_INDEX} names no pipeline class (_class_name)")
    return index


def folder_family(folder: Path) -> str:
    """SD1.5 / SDXL / SDXL refiner from the pipeline class in model_index.json (SD2 shares SD1.5's
    class: its text encoder is 1024 wide); another pipeline shows its class name (e.g. Flux)."""
    class_name = read_model_index(folder)["_class_name"]
    family = FOLDER_FAMILIES.get(class_name, class_name.removesuffix("Pipeline"))
    if family == "SD1.5":
        try:
            width = json.loads((Path(folder) / "text_encoder" / "config.json").read_text()).get("hidden_size")
        except (OSError, ValueError, AttributeError):
            width = None
        if width == 1024:
            family = "SD2"
    return family


def folder_weights(folder: Path) -> dict[str, list[Path]]:
    """component -> the weight files from_pretrained loads for it: the non-variant `.safetensors`
    files (`diffusion_pytorch_model.safetensors`, `model.safetensors`, their shards), else the
    `.bin` ones (pickles). Variants such as `*.fp16.safetensors` are never loaded (no variant is
    asked for), so they are left out."""
    out: dict[str, list[Path]] = {}
    for component, spec in read_model_index(folder).items():
        if component.startswith("_") or component in UNUSED_COMPONENTS or not isinstance(spec, list):
            continue
        if None in spec:  # [null, null]: the pipeline has no such component
            continue
        d = Path(folder) / component
        # a variant has a second dot in its name (diffusion_pytorch_model.fp16.safetensors)
        files = sorted(f for f in d.glob("*") if f.is_file() and "." not in f.stem) if d.is_dir() else []
        safe = [f for f in files if f.suffix == ".safetensors"]
        out[component] = safe or [f for f in files if f.suffix == ".bin"]
    return out


def folder_files(folder: Path) -> list[Path]:
    """The files of a diffusers folder that make the model: model_index.json, each loaded
    component's configs and tokenizer files (.json, .txt; shard indexes aside), and its weights.
    README, images, download caches and unused variants are not part of it."""
    folder = Path(folder)
    files = [folder / MODEL_INDEX]
    try:
        components = folder_weights(folder)
    except ModelFileError:
        return files  # a broken index: its loader says what is wrong; listing and hashing go on
    for component, weights in components.items():
        d = folder / component
        files += sorted(f for f in d.glob("*") if f.is_file() and f.suffix in (".json", ".txt")
                        and not f.name.endswith(".index.json"))
        files += weights
    return sorted(files)


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
