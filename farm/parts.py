"""The parts of a model built from parts (Flux, SD3.5, Z-Image ...): which text encoder and VAE
files a checkpoint renders with, found in the users' models folders. Torch-free: the coordinator
resolves them when it reads a spec, so a missing file is a spec error and every task pins its
parts by name and sha256.

For each part of the checkpoint's family (farm/families.py `Family.parts`, in order):
1. a file the spec names (`text_encoders: [...]`, `vae: ...`), matched to a part by what its header
   shows (a CLIP, T5 or Qwen3 encoder; of two CLIP files, the narrower is clip_l), never by name;
2. else the part inside the checkpoint itself (an all-in-one file: Forge's and civitai's);
3. else the family's default: the first file, in name order, of the part's kind whose name
   matches the part's patterns (`t5xxl*`, `ae.*` ...) and whose header is the right architecture.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from farm.families import Family, Part
from farm.model_files import ModelFileError, read_tensor_shapes
from farm.models import Registry


class PartError(ValueError):
    """A part that cannot be found or does not fit; one line saying what was looked for where."""


@dataclass(frozen=True)
class PartFile:
    role: str
    name: str  # the registry name (file stem); "" for a part the checkpoint holds
    path: Path | None


def encoder_arch(tensors: dict[str, tuple]) -> str | None:
    """What kind of text encoder a file's tensors are: "clip", "t5", "qwen3", or None."""
    for name in tensors:
        if name.endswith("SelfAttention.q.weight"):
            return "t5"
        if name.endswith("self_attn.q_norm.weight"):  # Qwen3's per-head norms (Qwen2 has none)
            return "qwen3"
        if "text_model.encoder.layers." in name:
            return "clip"
    return None


def encoder_width(tensors: dict[str, tuple]) -> int:
    """The token-embedding width of a text encoder (orders CLIP-L before CLIP-G)."""
    for name, (_, shape) in tensors.items():
        if name.endswith(("token_embedding.weight", "shared.weight", "embed_tokens.weight")) and len(shape) == 2:
            return int(shape[1])
    return 0


def _arch(path: Path, part: Part) -> str | None:
    try:
        tensors = read_tensor_shapes(path)
    except ModelFileError:
        return None
    return "vae" if part.kind == "vae" else encoder_arch(tensors)


def resolve_parts(family: Family, checkpoint: Path, registry: Registry,
                  text_encoders: list[str] = (), vae: str | None = None) -> list[PartFile]:
    """The file of each part of `family` for this checkpoint (see the module's docstring).
    Raises PartError (ModelFileError for a named file that is not in the models folders)."""
    named: dict[str, PartFile] = {}
    encoders = [p for p in family.parts if p.kind == "text_encoder"]
    given = []
    for name in text_encoders:
        model = registry.resolve("text_encoder", name, label="text encoder")
        tensors = read_tensor_shapes(model.path)
        given.append((encoder_arch(tensors), encoder_width(tensors), model))
    for arch, _, model in sorted(given, key=lambda g: g[1]):
        free = [p for p in encoders if p.arch == arch and p.role not in named]
        if not free:
            wanted = ", ".join(f"{p.role} ({p.arch})" for p in encoders)
            raise PartError(f"text encoder '{model.name}' is a {arch or 'unknown'} encoder; {family.name} renders "
                            f"with {wanted}, one file each")
        named[free[0].role] = PartFile(free[0].role, model.name, model.path)
    if vae:
        model = registry.resolve("vae", vae, label="VAE")
        named["vae"] = PartFile("vae", model.name, model.path)

    names: list[str] = []
    try:
        names = list(read_tensor_shapes(checkpoint))
    except ModelFileError:
        pass
    out = []
    for part in family.parts:
        if part.role in named:
            out.append(named[part.role])
        elif any(name.startswith(part.in_checkpoint) for name in names):  # one-part prefixes (vae.) too
            out.append(PartFile(part.role, "", None))
        else:
            out.append(default_part(family, part, registry))
    return out


def default_part(family: Family, part: Part, registry: Registry) -> PartFile:
    """The family's default file for a part: by name pattern, confirmed by its header."""
    files = sorted(registry.unique_files(part.kind), key=lambda m: m.path.name.lower())
    for pattern in part.patterns:
        for model in files:
            if fnmatch.fnmatch(model.path.name.lower(), pattern) and _arch(model.path, part) == part.arch:
                return PartFile(part.role, model.name, model.path)
    what = "VAE" if part.kind == "vae" else f"{part.role} text encoder"
    patterns = ", ".join(f"{p}.safetensors" if not p.endswith("*") or "." in p else p for p in part.patterns)
    raise PartError(f"{family.name} needs a {what}: looked for {patterns} in {registry.where(part.kind)}; put the "
                    f"file there or name it in the spec ({'vae' if part.kind == 'vae' else 'text_encoders'}: ...)")
