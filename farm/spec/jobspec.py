"""JobSpec: a validated job, and its job id (a hash of what it renders)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr

from farm.hashes import sha256_file
from farm.inputs import InputImage
from farm.families import UNKNOWN, checkpoint_family, family
from farm.params import DEFAULTS
from farm.spec.nodes import show_number
from farm.task import RenderTask

SPEC_VERSION = 1
DEFAULT_FILENAME = RenderTask.model_fields["filename"].default


class JobSpec(BaseModel):
    """A validated job. `values` holds every axis (fixed ones as one value) in expansion order;
    `dims` groups them into the mixed-radix digits of a task index (zipped axes share a digit)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    job_id: str
    source_text: str
    file: str = "<spec>"
    batch_size: int = 1
    grid_x: str | None = None
    grid_y: str | None = None
    filename: str = DEFAULT_FILENAME
    values: dict[str, Any]  # axis -> Sequence; values as labels show them (see docs/job-spec.md)
    dims: tuple[tuple[str, ...], ...]
    checkpoint_files: dict[str, Path] = {}  # filled only when a models folder was given
    vae_files: dict[str, Path] = {}  # likewise
    upscaler_files: dict[str, Path] = {}  # likewise: upscaler model files (hr_upscaler, upscaler)
    refiner_files: dict[str, Path] = {}  # likewise (the refiner axis' checkpoints)
    lora_files: dict[str, Path] = {}  # likewise: the LoRAs of the prompts' tags and the lora axis
    embedding_files: dict[str, Path] = {}  # likewise: the embeddings whose names the spec's text holds
    # Routing only (farm/messages.py, worker/queue_order.py): which workers and in what order, not what is rendered,
    # so neither is part of the job id.
    priority: str = "normal"
    requires: tuple[str, ...] = ()
    # Keys the spec left out that the checkpoint's family may default (Flux: cfg 1, Euler ...).
    family_defaults: frozenset[str] = frozenset()
    # checkpoint -> part role -> (file name, sha256) for families built from parts (farm/parts.py);
    # "" as the name: the checkpoint holds that part itself.
    parts: dict[str, dict[str, tuple[str, str | None]]] = {}
    # input-image axis (init_images) -> axis value -> the pinned image (farm/inputs.py)
    inputs: dict[str, dict[str, InputImage]] = {}
    # "kind:name" -> (sha256, URL) of each model the spec gives by URL (farm/spec/models.py)
    links: dict[str, tuple[str, str]] = {}
    _hashes: dict[str, str] = PrivateAttr(default_factory=dict)
    # checkpoint -> family, read once: expansion asks for every task, and a header read is ~50 ms
    _families: dict[str, str] = PrivateAttr(default_factory=dict)

    def family_of(self, checkpoint: str) -> str:
        """The checkpoint's family name (UNKNOWN without a models folder or a job record)."""
        known = self._hashes.get(f"family:{checkpoint}") or self._families.get(checkpoint)
        if known is None:
            known = self._families[checkpoint] = checkpoint_family(checkpoint, self.checkpoint_files, {})
        return known

    def facts_of(self, checkpoint: str):
        """The checkpoint's farm.families.Family row, or None when unknown."""
        return family(self.family_of(checkpoint))

    def value(self, key: str, v: dict):
        """A task's value of `key`: its axis value, or, when the spec left the key out, the
        checkpoint family's default where the family has one (farm/families.py `defaults`)."""
        if key in self.family_defaults:
            facts = family(self.family_of(v["checkpoint"]))
            if facts is not None and facts.default(key) is not None:
                return facts.default(key)
        return v.get(key, DEFAULTS.get(key, [None])[0])

    def uses(self, key: str, checkpoint: str) -> bool:
        """Whether tasks of this checkpoint have `key` (distilled_cfg: Flux.1 [dev]; shift: flow
        families); an unknown family is given what the spec says."""
        facts = family(self.family_of(checkpoint))
        if facts is None:
            return True
        if key == "distilled_cfg":
            return facts.default("distilled_cfg") is not None
        return facts.flow

    def part_files(self, checkpoint: str) -> dict[str, tuple[str, str | None]]:
        """role -> (file name, sha256) of the checkpoint's parts; {} for SD1.5/SDXL."""
        return self.parts.get(checkpoint, {})

    def input_image(self, axis: str, value: str) -> InputImage:
        """The pinned image an input axis value names."""
        return self.inputs[axis][value]

    def input_images(self) -> list[InputImage]:
        """Every input image of the job, once each (for the upload to its store)."""
        return list({i.name: i for images in self.inputs.values() for i in images.values()}.values())

    def axes(self) -> dict[str, Sequence]:
        return dict(self.values)

    def swept_axes(self) -> list[str]:
        return [name for name, seq in self.values.items() if len(seq) > 1]

    def task_count(self) -> int:
        return math.prod(len(self.values[group[0]]) for group in self.dims)

    def image_count(self) -> int:
        return self.task_count() * self.batch_size

    @property
    def prompt_sr_search(self) -> str | None:
        """The S/R text to search for: the first prompt_sr value (A1111's rule)."""
        return self.values["prompt_sr"][0] if "prompt_sr" in self.values else None

    def combine_expression(self) -> str:
        """The swept part of the expansion as a combine expression, outermost first."""
        terms = [
            group[0] if len(group) == 1 else "(" + ", ".join(group) + ")"
            for group in self.dims
            if len(self.values[group[0]]) > 1
        ]
        return " * ".join(terms) or "(nothing swept)"

    def checkpoint_hash(self, name: str) -> str | None:
        """sha256 of the checkpoint: given to parse_spec, or hashed (once) from the models folder."""
        if name not in self._hashes and name in self.checkpoint_files:
            self._hashes[name] = sha256_file(self.checkpoint_files[name])
        return self._hashes.get(name)

    def _file_hash(self, kind: str, files: dict[str, Path], name: str) -> str | None:
        """sha256 of a model file of `kind`, kept beside the checkpoints' under 'KIND:NAME': given to
        parse_spec (a job record, a URL pin), or hashed once from the models folder."""
        key = f"{kind}:{name}"
        if key not in self._hashes and name in files:
            self._hashes[key] = sha256_file(files[name])
        return self._hashes.get(key)

    def vae_hash(self, name: str) -> str | None:
        return self._file_hash("vae", self.vae_files, name)

    def upscaler_hash(self, name: str) -> str | None:
        return self._file_hash("upscaler", self.upscaler_files, name)

    def refiner_hash(self, name: str) -> str | None:
        return self._file_hash("refiner", self.refiner_files, name)

    def model_pins(self, kind: str) -> dict[str, str]:
        """name -> sha256 of the job's LoRAs or embeddings (kind 'lora', 'embedding') whose hash is
        known: from the models folder, a job record or a URL pin. Every task carries them all (a few
        per job; a worker checks those its prompt uses), so a same-named file with other weights on
        a worker is never used unnoticed."""
        files = self.lora_files if kind == "lora" else self.embedding_files
        names = [*files, *(k.split(":", 1)[1] for k in list(self._hashes) if k.startswith(f"{kind}:"))]
        return {name: h for name in dict.fromkeys(names) if (h := self._file_hash(kind, files, name))}

    def checkpoint_hashes(self) -> dict[str, str]:
        """name -> sha256 for every checkpoint (and 'vae:NAME' for every VAE) whose hash is known,
        and 'family:NAME' -> SD1.5/SDXL: store it with the job, so a coordinator without the models
        folder re-expands to the same tasks (the default size depends on the family)."""
        hashes = {name: self.checkpoint_hash(name) for name in self.values["checkpoint"]}
        for name, parts in self.parts.items():  # re-expanded without the models folder: same parts
            hashes[f"parts:{name}"] = json.dumps(parts, sort_keys=True)
        hashes.update({f"vae:{name}": self.vae_hash(name) for name in self.values.get("vae", [])})
        for axis in ("hr_upscaler", "upscaler"):
            hashes.update({f"upscaler:{name}": self.upscaler_hash(name) for name in self.values.get(axis, [])})
        for axis, images in self.inputs.items():  # re-expanded without the image files: same pins
            hashes[f"inputs:{axis}"] = json.dumps([i.record() for i in images.values()])
        hashes.update({f"refiner:{name}": self.refiner_hash(name) for name in self.values.get("refiner", [])})
        for kind in ("lora", "embedding"):  # resumed without the models folder: the same pins
            hashes.update({f"{kind}:{name}": sha for name, sha in self.model_pins(kind).items()})
        for name in self.values["checkpoint"]:
            family = self._hashes.get(f"family:{name}") or checkpoint_family(name, self.checkpoint_files, {})
            hashes[f"family:{name}"] = None if family == UNKNOWN else family
        return {name: h for name, h in hashes.items() if h}

    def describe(self) -> list[str]:
        lines = [f"job {self.job_id} (from {self.file})"]
        width = max(len(name) for name in self.values)
        for name, seq in self.values.items():
            lines.append(f"  {name:<{width}} {len(seq):>7,}  {_preview(seq)}")
        lines.append(f"combine: {self.combine_expression()}")
        if self.grid_x or self.grid_y:
            lines.append(f"grid: x={self.grid_x or '-'}, y={self.grid_y or '-'}")
        lines.append(f"output filename: {self.filename}")
        lines.append(
            f"tasks: {self.task_count():,}  images: {self.image_count():,} (batch size {self.batch_size})"
        )
        return lines


def _preview(seq: Sequence, limit: int = 4) -> str:
    def show(v: Any) -> str:
        if isinstance(v, str):
            v = v if len(v) <= 40 else v[:37] + "..."
            return json.dumps(v, ensure_ascii=False)
        return show_number(v)

    n = len(seq)
    if n <= limit:
        return ", ".join(show(v) for v in seq)
    return ", ".join(show(seq[i]) for i in range(limit - 1)) + f", ..., {show(seq[n - 1])}"


def _canonical(seq: Sequence) -> Any:
    """A JSON-able stand-in for an axis in the job id: short axes by value (so `1-4` and
    [1, 2, 3, 4] are the same job), long ones by their (lazy, exact) structure."""
    return list(seq) if len(seq) <= 4096 else repr(seq)


def job_id(name: str, dims: Sequence[tuple[str, ...]], values: dict, batch_size: int, filename: str) -> str:
    """NAME-HASH: the hash covers what the job renders (not its comments or key spelling), so the
    same sweep maps to the same job folder and a re-run renders only what is missing."""
    content = {
        "v": SPEC_VERSION,
        "dims": [[[a, _canonical(values[a])] for a in group] for group in dims],
        "batch_size": batch_size,
        "filename": filename,
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return f"{name}-{digest[:8]}"
