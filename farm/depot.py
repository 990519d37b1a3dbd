"""The model depot: model files kept in a store (a folder or an S3 bucket) under their sha256, each
with a small JSON record, so that a worker lacking a model a task pins fetches it from there
(worker/model_cache.py) instead of someone copying models folders between PCs by hand.

Keys (farm/store/layout.py): the file at `models/sha256/{sha256}`, its record beside it at
`models/sha256/{sha256}.json` (written after the file: a record means the file is whole), and
`models/names/{kind}/{stem}.json` naming the sha256 last pushed under that name, for what a task
names without a hash (LoRAs in `<lora:...>` tags). Pure Python, no torch: `farm models push` and
`farm submit --push-models` run on any box.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from farm.model_files import ModelFileError
from farm.models import KIND_DIRS, KINDS, SUFFIXES, ModelFile, Registry
from farm.store import Store
from farm.store import layout
from farm.vram import Weights, file_weights, own_weights

SHA256 = re.compile(r"[0-9a-f]{64}")
URL = re.compile(r"(hf://[^/\s]+/[^/\s]+/\S+|https?://\S+)$")
URL_TIMEOUT = 30  # seconds without a byte before a URL download counts as a failed try
RECORD_MAX_BYTES = 64 << 10  # a record is a few hundred bytes; a store may be shared with others
ALL_SUFFIXES = tuple(sorted({s for kind in KINDS for s in SUFFIXES[kind]}))


class DepotError(Exception):
    """A model that cannot go into (or come out of) the depot, said in one line."""


@dataclass(frozen=True)
class DepotRecord:
    sha256: str
    name: str  # the file's stem where it was pushed from
    kind: str  # farm.models.KINDS
    family: str
    size: int
    a1111_hash: str  # what A1111 shows: 10 hex for checkpoints and VAEs, 12 for LoRAs and embeddings
    suffix: str  # .safetensors, .gguf ...: how a worker's loader reads the file
    url: str = ""  # a model kept elsewhere (hf://, https://): workers fetch it from there, pinned by sha256
    # What its weights take, read from its header at push: (role, bytes, precision) per farm/vram.py's
    # own_weights for a checkpoint ("denoiser", and parts inside an all-in-one file), ("file", ...)
    # for a text encoder or VAE; () when unknown (a URL, a pickle, a record older than the field):
    # a worker then cannot weigh a checkpoint it would fetch for VRAM, and does not.
    weights: tuple[tuple[str, int, str], ...] = ()

    def to_json(self) -> str:
        data = asdict(self)
        for optional in ("url", "weights"):
            if not data[optional]:
                del data[optional]
        return json.dumps(data, sort_keys=True)

    def held(self) -> dict[str, Weights]:
        """The weights by role (farm.vram.Weights); {} when the record does not say."""
        return {role: Weights(size, precision) for role, size, precision in self.weights}

    @classmethod
    def from_json(cls, data: bytes) -> DepotRecord | None:
        """The record, or None for anything that is not a valid one (a store may hold others' junk)."""
        if len(data) > RECORD_MAX_BYTES:
            return None
        try:
            raw = json.loads(data)
            record = cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k not in ("url", "weights")},
                         url=raw.get("url", ""), weights=_weights(raw.get("weights")))
        except (ValueError, TypeError, KeyError):
            return None
        ok = (isinstance(record.sha256, str) and SHA256.fullmatch(record.sha256) and record.kind in KINDS
              and isinstance(record.size, int) and record.size >= 0 and record.suffix in SUFFIXES[record.kind]
              and isinstance(record.name, str) and 0 < len(record.name) <= 200
              and all(isinstance(v, str) for v in (record.family, record.a1111_hash, record.url))
              and (not record.url or URL.match(record.url)))
        return record if ok else None


def _weights(raw) -> tuple[tuple[str, int, str], ...]:
    """A record's weights field, or () for anything else (optional: the record stays usable)."""
    if not isinstance(raw, list) or len(raw) > 16:
        return ()
    ok = all(isinstance(w, list) and len(w) == 3 and isinstance(w[0], str) and len(w[0]) <= 40
             and isinstance(w[1], int) and w[1] >= 0 and isinstance(w[2], str) and len(w[2]) <= 40 for w in raw)
    return tuple(tuple(w) for w in raw) if ok else ()


def stored_weights(model: ModelFile, family_name: str) -> tuple[tuple[str, int, str], ...]:
    """What a checkpoint, text encoder or VAE file's weights take (DepotRecord.weights), from its
    header; () for other kinds and for a file whose header cannot be read."""
    try:
        if model.kind == "checkpoint":
            held = own_weights(family_name, model.path)
        elif model.kind in ("text_encoder", "vae"):
            held = {"file": file_weights(model.path)}
        else:
            return ()
    except (ModelFileError, OSError):
        return ()
    return tuple((role, w.bytes, w.precision) for role, w in held.items())


class Depot:
    """The depot in one store."""

    def __init__(self, store: Store):
        self.store = store

    def describe(self) -> str:
        return self.store.describe()

    def record(self, sha256: str) -> DepotRecord | None:
        """The record of a model by its sha256; None when the depot has no (complete) copy."""
        try:
            return DepotRecord.from_json(self.store.read_bytes(layout.model_record_key(sha256)))
        except FileNotFoundError:
            return None

    def by_name(self, kind: str, name: str) -> DepotRecord | None:
        """The model last pushed under this stem (a `<lora:NAME>` tag carries no hash)."""
        stem = name.rsplit("/", 1)[-1]
        try:
            pointer = json.loads(self.store.read_bytes(layout.model_name_key(kind, stem))[:RECORD_MAX_BYTES])
            sha = pointer["sha256"]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        return self.record(sha) if isinstance(sha, str) and SHA256.fullmatch(sha) else None

    def names(self, kind: str) -> list[str]:
        """The stems pushed under a kind (what a prompt may name by word: embeddings)."""
        prefix = layout.model_names_prefix(kind)
        return [key[len(prefix):-len(".json")] for key in self.store.list_keys(prefix)
                if key.endswith(".json") and "/" not in key[len(prefix):]]

    def records(self) -> list[DepotRecord]:
        found = []
        for key in self.store.list_keys(layout.model_records_prefix()):
            if key.endswith(".json"):
                record = DepotRecord.from_json(self.store.read_bytes(key))
                if record is not None:
                    found.append(record)
        return sorted(found, key=lambda r: (KINDS.index(r.kind), r.name.lower(), r.sha256))

    def open(self, record: DepotRecord) -> BinaryIO:
        """The model file as a stream to read, from the store or the record's URL (verified by the
        reader: worker/model_cache.py); FileNotFoundError when it is not there."""
        if record.url:
            return url_open(record.url)
        return self.store.open_read(layout.model_object_key(record.sha256))

    def where(self, record: DepotRecord) -> str:
        """Where a model's bytes come from, for messages."""
        return record.url or self.describe()

    def link(self, kind: str, name: str, url: str, sha256: str, size: int | None = None) -> DepotRecord:
        """Record a model kept at a URL (`hf://org/repo/file.safetensors`, https://...), pinned by
        its sha256: workers fetch it from there like a depot file. The size, unless given, from a
        HEAD request."""
        try:
            record = url_record(kind, name, url, sha256, size)
        except (OSError, ValueError) as e:
            raise DepotError(f"cannot read the size of {url} ({e}): pass --size") from None
        sha256, stem = record.sha256, record.name
        self.store.write_text(layout.model_record_key(sha256), record.to_json())
        self.store.write_text(layout.model_name_key(kind, stem), json.dumps({"sha256": sha256, "pushed": time.time()}))
        return record

    def push(self, model: ModelFile, progress: Callable[[int], None] = lambda n: None) -> tuple[DepotRecord, bool]:
        """Upload one model file unless the depot has it: (its record, whether it was sent)."""
        if model.path.is_dir():
            raise DepotError(f"{model.path}: a diffusers folder cannot go into the depot yet; push a single file")
        if model.path.suffix.lower() not in SUFFIXES[model.kind]:
            raise DepotError(f"{model.path}: not a {model.kind} file ({', '.join(SUFFIXES[model.kind])})")
        sha = model.sha256()
        stem = model.name.rsplit("/", 1)[-1]
        existing = self.record(sha)
        if existing is None:
            try:
                family, a1111 = model.family(), model.a1111_hash()
            except ModelFileError:  # a header this version cannot read: the file still travels
                family, a1111 = "?", sha[:10]
            record = DepotRecord(sha, stem, model.kind, family, model.size, a1111, model.path.suffix.lower(),
                                 weights=stored_weights(model, family))
            self.store.write_file(layout.model_object_key(sha), model.path, progress)
            self.store.write_text(layout.model_record_key(sha), record.to_json())  # last: the file is whole
        else:
            record = existing
        pointer = json.dumps({"sha256": sha, "pushed": time.time()})
        self.store.write_text(layout.model_name_key(model.kind, stem), pointer)
        return record, existing is None


def url_record(kind: str, name: str, url: str, sha256: str, size: int | None = None) -> DepotRecord:
    """The record of a model kept at a URL, pinned by its sha256 (`farm models link`, or a spec's
    `{url: ..., sha256: ...}` on the worker that fetches it); the size, unless given, from a HEAD
    request, whose failure (offline, 404) is an OSError (urllib's errors are)."""
    if not URL.match(url):
        raise DepotError(f"{url}: expected hf://ORG/REPO/FILE or an http(s):// URL")
    sha256 = sha256.lower()
    if not SHA256.fullmatch(sha256):
        raise DepotError(f"sha256 '{sha256}': expected 64 hex digits (the file's SHA-256)")
    suffix = Path(url.split("?")[0]).suffix.lower()
    if suffix not in SUFFIXES[kind]:
        raise DepotError(f"{url}: a {kind} file ends in {', '.join(SUFFIXES[kind])}")
    if size is None:
        with _open_url(url, "HEAD") as response:
            size = int(response.headers.get("Content-Length") or -1)
        if size < 0:
            raise OSError("the server gives no Content-Length")
    # A1111's hash of a LoRA is of its tensors, unknown until it is read
    a1111 = "" if kind == "lora" else sha256[: 12 if kind == "embedding" else 10]
    return DepotRecord(sha256, name.rsplit("/", 1)[-1], kind, "?", size, a1111, suffix, url)


def resolve_url(url: str) -> str:
    """The https URL of a model URL: `hf://ORG/REPO[@REVISION]/PATH` is the Hugging Face hub's
    resolve URL (HF_ENDPOINT, as huggingface_hub reads it, for a mirror); others are as given."""
    if not url.startswith("hf://"):
        return url
    org, repo, *path = url.removeprefix("hf://").split("/")
    repo, _, revision = repo.partition("@")
    if not path:
        raise DepotError(f"{url}: expected hf://ORG/REPO/FILE")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return f"{endpoint}/{org}/{repo}/resolve/{revision or 'main'}/{'/'.join(path)}"


def _open_url(url: str, method: str = "GET"):
    import urllib.request

    request = urllib.request.Request(resolve_url(url), method=method, headers={"User-Agent": "seedfarm"})
    return urllib.request.urlopen(request, timeout=URL_TIMEOUT)  # noqa: S310 (http(s) only: URL)


def url_open(url: str) -> BinaryIO:
    """A URL's body as a stream to read; a 404 is FileNotFoundError, as for a store."""
    import urllib.error

    try:
        return _open_url(url)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise FileNotFoundError(url) from None
        raise


def words_in(names: Iterable[str], texts: Iterable[str]) -> list[str]:
    """The names that appear as a word in one of the texts: how a prompt uses an embedding (by its
    file stem, as A1111 does; `sub/name` never)."""
    texts = [t for t in texts if t]
    return [name for name in names if "/" not in name
            and any(re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", t) for t in texts)]


def kind_of_path(path: Path) -> str:
    """The kind of a file given by path, from the folder it sits in (A1111/ComfyUI names);
    checkpoint when the folder says nothing."""
    for parent in Path(path).resolve().parents:
        for kind in KINDS:
            if parent.name in KIND_DIRS[kind] and parent.name != ".":
                return kind
    return "checkpoint"


def model_to_push(ref: str, registry: Registry, kind: str | None = None) -> ModelFile:
    """The file `farm models push` means by a name or a path; a name is looked up in each kind
    (checkpoints first) unless `kind` says which."""
    path = Path(ref).expanduser()
    if path.is_file():
        k = kind or kind_of_path(path)
        return ModelFile(k, path.stem, path.resolve())
    kinds = [kind] if kind else list(KINDS)
    for k in kinds:
        found = registry.files(k).get(re.sub(r"\.(safetensors|gguf|ckpt|pt|bin)$", "", ref))
        if found is not None:
            return found
    try:
        return registry.resolve(kinds[0], ref)  # its message: did-you-mean and where it looked
    except ModelFileError as e:
        raise DepotError(str(e)) from None


def job_models(tasks: Iterable, registry: Registry) -> tuple[list[ModelFile], list[str]]:
    """The model files a job's tasks name (checkpoint, VAE, text encoders, LoRAs in prompts), each
    once, and a line per model that cannot be pushed (not found here, a diffusers folder or hub id)."""
    from farm.prompts import extract_extra_networks, lora_refs

    wanted: dict[tuple[str, str], None] = {}
    embeddings = list(registry.files("embedding"))
    for task in tasks:
        for name in words_in(embeddings, (task.prompt, task.negative_prompt, task.hr_prompt, task.hr_negative_prompt)):
            wanted[("embedding", name)] = None
        wanted[("checkpoint", task.checkpoint)] = None
        if task.vae:
            wanted[("vae", task.vae)] = None
        for name in task.text_encoders.values():
            if name:
                wanted[("text_encoder", name)] = None
        for text in (task.prompt, task.hr_prompt):
            try:
                for ref in lora_refs(extract_extra_networks(text)[1]):
                    wanted[("lora", ref.name)] = None
            except ValueError:
                pass  # the spec check already said so
    found, problems, seen = [], [], set()
    for kind, name in wanted:
        try:
            model = registry.resolve(kind, name)
        except ModelFileError as e:
            problems.append(str(e))
            continue
        if model.path.is_dir():
            problems.append(f"{kind} '{name}' is a diffusers folder: not pushed (workers need their own copy)")
        elif model.path not in seen:
            seen.add(model.path)
            found.append(model)
    return found, problems
