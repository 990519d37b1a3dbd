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


# ---- GGUF (llama.cpp's format; ComfyUI-GGUF and Forge load diffusion models from it) --------------

# The GGUF header's limits: far above any real file (a Flux GGUF has ~1,000 tensors and ~10 keys;
# an LLM's, with its tokenizer, ~300,000 array items), low enough that a hostile file cannot make
# the coordinator read for long or hold much.
MAX_GGUF_TENSORS = 100_000
MAX_GGUF_KEYS = 10_000
MAX_GGUF_STRING = 1_000_000
MAX_GGUF_ARRAY = 10_000_000
# ggml tensor types by number (ggml.h): the ones diffusion files use, by llama.cpp's names.
GGML_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
              10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
              17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
              23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16"}
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf_header(path: Path) -> tuple[dict[str, dict], dict[str, object]]:
    """(tensor name -> {"dtype": ggml type name, "shape": [...] in torch order}, metadata) of a
    GGUF file, read from its header without loading anything (array values are skipped)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            return _gguf_header(f, path.name, size)
    except OSError as e:
        raise ModelFileError(f"{path.name}: cannot read the file ({e.strerror or e})") from None
    except (struct.error, UnicodeDecodeError, EOFError):
        raise ModelFileError(f"{path.name}: not a GGUF file or truncated (corrupt header)") from None


def _gguf_header(f, name: str, size: int) -> tuple[dict[str, dict], dict[str, object]]:
    def read(fmt: str):
        data = f.read(struct.calcsize(fmt))
        if len(data) < struct.calcsize(fmt):
            raise EOFError
        return struct.unpack(fmt, data)[0]

    def string() -> str:
        n = read("<Q")
        if n > MAX_GGUF_STRING:
            raise ModelFileError(f"{name}: corrupt GGUF header (a {n}-byte string)")
        data = f.read(n)
        if len(data) < n:
            raise EOFError
        return data.decode("utf-8")

    def value(kind: int):
        if kind in _GGUF_SCALARS:
            return read(_GGUF_SCALARS[kind])
        if kind == 8:
            return string()
        if kind == 9:  # an array: its items are skipped (an LLM's tokenizer holds 150,000 strings)
            item, n = read("<I"), read("<Q")
            if n > MAX_GGUF_ARRAY:
                raise ModelFileError(f"{name}: corrupt GGUF header (an array of {n} items)")
            if item in _GGUF_SCALARS:
                f.seek(n * struct.calcsize(_GGUF_SCALARS[item]), 1)
            else:
                for _ in range(n):
                    value(item)
            return None
        raise ModelFileError(f"{name}: corrupt GGUF header (value type {kind})")

    if f.read(4) != b"GGUF":
        raise ModelFileError(f"{name}: not a GGUF file")
    version, tensors, keys = read("<I"), read("<Q"), read("<Q")
    if version not in (2, 3):
        raise ModelFileError(f"{name}: GGUF version {version} is not supported (2 and 3 are)")
    if tensors > MAX_GGUF_TENSORS or keys > MAX_GGUF_KEYS:
        raise ModelFileError(f"{name}: corrupt GGUF header ({tensors} tensors, {keys} keys)")
    metadata: dict[str, object] = {}
    for _ in range(keys):
        key = string()
        metadata[key] = value(read("<I"))
    header: dict[str, dict] = {}
    for _ in range(tensors):
        tensor = string()
        dims = read("<I")
        if dims > 8:
            raise ModelFileError(f"{name}: corrupt GGUF header ({tensor} has {dims} dimensions)")
        shape = [read("<Q") for _ in range(dims)][::-1]  # GGUF lists the fastest dimension first
        kind, _offset = read("<I"), read("<Q")
        header[tensor] = {"dtype": GGML_TYPES.get(kind, f"type {kind}"), "shape": shape}
    if f.tell() > size:
        raise EOFError
    return header, metadata


# ---- any model file's tensors ------------------------------------------------------------------

MODEL_SUFFIXES = (".safetensors", ".gguf")  # the model files whose tensor names can be read safely


def read_tensor_shapes(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """tensor name -> (dtype, shape) of a .safetensors or .gguf file, from its header only."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        header, _ = read_gguf_header(path)
    else:
        header = read_safetensors_header(path)
    return {k: (str(v["dtype"]), tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"}


# How people name a file's weights' precision (what `farm models list` and the workers show).
_PRECISIONS = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F8_E4M3": "fp8_e4m3fn", "F8_E5M2": "fp8_e5m2"}


def weights_precision(tensors: dict[str, tuple[str, tuple[int, ...]]]) -> str:
    """The precision most of a model's weights are stored in, by element count: fp16, bf16, fp32,
    fp8_e4m3fn, fp8_e5m2, or a GGUF quantization (Q8_0, Q4_K ...). A quantized or fp8 file keeps
    its norms and biases in a wider type; those are few elements, so they do not count."""
    counts: dict[str, int] = {}
    for dtype, shape in tensors.values():
        n = 1
        for dim in shape:
            n *= dim
        counts[dtype] = counts.get(dtype, 0) + n
    if not counts:
        return "?"
    top = max(counts, key=counts.get)
    return _PRECISIONS.get(top, top)
