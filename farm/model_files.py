"""Reading model files without loading them: a safetensors file's header (its tensor names,
checked against the file's size) and a diffusers folder's model_index.json and the files that load.

Pure Python (no torch, no other farm module): the model registry (farm/models.py), the hashes
(farm/hashes.py) and the family table (farm/families.py) all read files through it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header

# Diffusers folders: the index file that makes a folder one model, and the components a worker
# never loads (A1111 has no safety checker), so their files are not part of the model's hash.
MODEL_INDEX = "model_index.json"
UNUSED_COMPONENTS = ("safety_checker", "feature_extractor")


class ModelFileError(ValueError):
    """A model file that cannot be used; the message is one line and names the file."""


def is_diffusers_folder(path: Path) -> bool:
    """A folder holding a diffusers pipeline. `NAME.config/` folders also have a model_index.json,
    but they are the configs of the single-file checkpoint beside them (worker/pipelines.py)."""
    path = Path(path)
    return path.is_dir() and (path / MODEL_INDEX).is_file() and not path.name.endswith(".config")


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
