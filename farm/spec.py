"""Job spec v1: load a job YAML, validate it, and hold the result as a JobSpec.

Validation walks PyYAML's node tree (yaml.compose) instead of plain loaded data, so every error can
name the file, line and column of the offending value: `jobs/x.yaml:7:9: seed: ...`. The reference
for every key is docs/job-spec.md.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, PrivateAttr
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from farm.checkpoints import resolve_checkpoint, sha256_file
from farm.models import ModelFileError, Registry, file_family
from farm.prompts import extract_extra_networks, lora_refs
from farm.ranges import LazySequence, RangeError, concat, parse_list
from farm.samplers import SCHEDULE_TYPES, display_name, parse_sampler
from farm.task import RenderTask, filename_pattern_problem

SPEC_VERSION = 1

# Default expansion order, outermost first: the most expensive axis to change first, so a worker
# keeps a checkpoint loaded as long as possible; seeds, free to change, innermost (as A1111's X/Y/Z).
AXIS_ORDER = (
    "checkpoint", "vae", "lora", "lora_weight", "size", "width", "height", "sampler", "schedule", "steps", "clip_skip", "cfg",
    "rng", "seed_resize_from", "variation_strength", "negative_prompt", "prompt", "prompt_sr",
    "variation_seed", "seed",
)
ALIASES = {
    "prompts": "prompt", "seeds": "seed", "checkpoints": "checkpoint", "samplers": "sampler",
    "negative": "negative_prompt", "negative_prompts": "negative_prompt", "cfg_scale": "cfg",
    "vaes": "vae", "loras": "lora", "lora_weights": "lora_weight",
    "subseed": "variation_seed", "subseed_strength": "variation_strength",
}
RNG_SOURCES = ("cpu", "nv")  # A1111's "GPU" source differs between GPU makers: not offered
# A vae/lora axis value meaning "none": the checkpoint's own VAE, no extra LoRA.
NO_MODEL = "None"
# The default size of each checkpoint family when a spec gives none (known with a models folder).
FAMILY_SIZES = {"SD1.5": "512x512", "SDXL": "1024x1024"}
OTHER_KEYS = ("version", "name", "prompt_matrix", "batch_size", "combine", "grid", "output", "priority", "requires")
REQUIRED = ("prompt", "checkpoint", "seed")
# A1111's defaults (v1.10) for the axes a spec may leave out (size: FAMILY_SIZES).
DEFAULTS: dict[str, list] = {
    "negative_prompt": [""], "sampler": ["DPM++ 2M"], "schedule": ["Automatic"], "steps": [20],
    "cfg": [7.0], "clip_skip": [1],
}
DEFAULT_FILENAME = RenderTask.model_fields["filename"].default
MAX_MATRIX_PARTS = 16  # 2^16 prompts per matrix prompt is already far past any useful grid
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SIZE = re.compile(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*")
_UNIQUE_CHECK_UP_TO = 100_000  # longer axes are ranges (seldom repeating); a set of millions costs too much


class SpecError(Exception):
    """A spec problem, as one line: FILE:LINE:COL: message (1-based line and column)."""

    def __init__(self, file: str, line: int, col: int, message: str):
        self.file, self.line, self.col = file, line, col
        self.message = " ".join(message.splitlines())  # one line, always
        super().__init__(f"{file}:{line}:{col}: {self.message}")


class PromptMatrix(LazySequence):
    """A1111's prompt matrix for one prompt `base|a|b`: 2^n prompts; prompt i holds part n+1 when
    bit n of i is set; parts joined with ", ". Lazy, so 16 parts do not build 65536 strings."""

    def __init__(self, prompt: str):
        base, *parts = prompt.split("|")
        self.prompt = prompt
        self.base = base.strip().strip(",").strip()
        self.parts = [p.strip().strip(",").strip() for p in parts]

    def __len__(self) -> int:
        return 1 << len(self.parts)

    def item(self, i: int) -> str:
        picked = [p for n, p in enumerate(self.parts) if i >> n & 1]
        return ", ".join([self.base] + picked if self.base else picked)

    def __repr__(self) -> str:
        return f"PromptMatrix({self.prompt!r})"


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
    # Routing only (farm/routing.py): which workers and in what order, not what is rendered,
    # so neither is part of the job id.
    priority: str = "normal"
    requires: tuple[str, ...] = ()
    _hashes: dict[str, str] = PrivateAttr(default_factory=dict)

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

    def vae_hash(self, name: str) -> str | None:
        """sha256 of a VAE file, kept with the checkpoints' under the key 'vae:NAME'."""
        key = f"vae:{name}"
        if key not in self._hashes and name in self.vae_files:
            self._hashes[key] = sha256_file(self.vae_files[name])
        return self._hashes.get(key)

    def checkpoint_hashes(self) -> dict[str, str]:
        """name -> sha256 for every checkpoint (and 'vae:NAME' for every VAE) whose hash is known,
        and 'family:NAME' -> SD1.5/SDXL: store it with the job, so a coordinator without the models
        folder re-expands to the same tasks (the default size depends on the family)."""
        hashes = {name: self.checkpoint_hash(name) for name in self.values["checkpoint"]}
        hashes.update({f"vae:{name}": self.vae_hash(name) for name in self.values.get("vae", [])})
        for name in self.values["checkpoint"]:
            family = self._hashes.get(f"family:{name}") or checkpoint_family(name, self.checkpoint_files, {})
            hashes[f"family:{name}"] = None if family == "?" else family
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


def load_spec(
    path: str | Path, models_dir: Path | None = None, checkpoint_hashes: dict[str, str] | None = None
) -> JobSpec:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(str(path), 1, 1, f"cannot read the job spec: {e}") from None
    return parse_spec(text, str(path), models_dir, checkpoint_hashes)


def parse_spec(
    text: str,
    filename: str = "<spec>",
    models_dir: Path | None = None,
    checkpoint_hashes: dict[str, str] | None = None,
) -> JobSpec:
    """Validate a spec text. Checkpoint names are checked against models_dir when given;
    checkpoint_hashes (name -> sha256, e.g. from a job record) spares hashing the files."""
    known = checkpoint_hashes or {}
    spec = _Parser(text, filename).parse(Path(models_dir) if models_dir is not None else None, known)
    spec._hashes.update(known)
    return spec


def checkpoint_family(name: str, files: dict[str, Path], known: dict[str, str]) -> str:
    """From the file when the models folder is at hand, else from a job record's 'family:NAME'."""
    if name not in files:
        return known.get(f"family:{name}", "?")
    try:
        return file_family(files[name], "checkpoint")
    except ValueError:
        return "?"  # a broken file fails on the worker, with its own message


def family_size(names: Sequence[str], files: dict[str, Path], known: dict[str, str]) -> str:
    """SDXL's 1024x1024 when every checkpoint is known to be SDXL; else SD1.5's 512x512 (without
    a models folder or a job record the families are unknown: give `size` for SDXL jobs)."""
    families = {checkpoint_family(name, files, known) for name in names}
    return FAMILY_SIZES["SDXL"] if families == {"SDXL"} else FAMILY_SIZES["SD1.5"]


def _tag_offset(value: Any, name: str) -> int | None:
    """Where the tag naming a LoRA starts in a prompt value, for the error's column; None when
    the value does not hold it as written (prompt_sr made it)."""
    m = re.search(r"<\w+:\s*" + re.escape(name) + r"\s*[:>]", value) if isinstance(value, str) else None
    return m.start() if m else None


def _preview(seq: Sequence, limit: int = 4) -> str:
    def show(v: Any) -> str:
        if isinstance(v, str):
            v = v if len(v) <= 40 else v[:37] + "..."
            return json.dumps(v, ensure_ascii=False)
        return _num(v)

    n = len(seq)
    if n <= limit:
        return ", ".join(show(v) for v in seq)
    return ", ".join(show(seq[i]) for i in range(limit - 1)) + f", ..., {show(seq[n - 1])}"


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _kind(value: Any) -> str:
    """How an unexpected YAML value reads in an error message."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a yes/no value)"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"'{value}'"
    return {dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)


def _csv(text: str) -> list[str]:
    """A1111's X/Y/Z list of words: comma separated, with "quotes" around values holding commas."""
    return [v.strip() for v in next(csv.reader([text], skipinitialspace=True), []) if v.strip()]


def _canonical(seq: Sequence) -> Any:
    """A JSON-able stand-in for an axis in the job id: short axes by value (so `1-4` and
    [1, 2, 3, 4] are the same job), long ones by their (lazy, exact) structure."""
    return list(seq) if len(seq) <= 4096 else repr(seq)


class _Parser:
    """One pass over one spec text: knows the file name for errors and the YAML loader that
    turns nodes into plain values."""

    def __init__(self, text: str, filename: str):
        self.source, self.file = text, filename
        self.loader: yaml.SafeLoader | None = None  # made in compose(): it may reject the text
        # axis -> the error for a value listed twice; raised unless the axis is zipped with others
        # and the zipped combinations are all different (checked once `combine` is known)
        self.repeats: dict[str, SpecError] = {}

    # ---- helpers -------------------------------------------------------------------------
    def error(self, node: Node, message: str, offset: int | None = None) -> SpecError:
        """An error at a node; `offset` points into a one-line scalar (e.g. a combine term)."""
        mark = node.start_mark
        col = mark.column + 1
        if offset is not None and mark.line == node.end_mark.line:
            col += offset + (1 if getattr(node, "style", None) in ("'", '"') else 0)
        return SpecError(self.file, mark.line + 1, col, message)

    def plain(self, node: Node) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as e:
            raise self.error(node, f"cannot read this value: {e.problem}") from None

    def compose(self) -> MappingNode:
        try:
            self.loader = yaml.SafeLoader(self.source)
            root = self.loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            if "\\t" in str(e.problem):
                hint = " (indent with spaces, not tabs)"
            elif "document" in str(e.problem):
                hint = "; a job spec is one YAML document: remove the '---' line"
            else:
                hint = "; check the indentation, and quote values that hold ': ' or start with [ { * & ! | > %"
            what = f"{e.context}: {e.problem}" if e.context else str(e.problem)
            message = f"YAML syntax error: {what}{hint}"
            raise SpecError(self.file, mark.line + 1, mark.column + 1, message) from None
        except yaml.YAMLError as e:  # a reader error: a character YAML does not allow
            pos = getattr(e, "position", 0) or 0
            line = self.source.count("\n", 0, pos) + 1
            col = pos - (self.source.rfind("\n", 0, pos) + 1) + 1
            reason = getattr(e, "reason", None) or str(e)
            message = f"YAML error: {reason} (character #x{getattr(e, 'character', 0):04x}); remove it"
            raise SpecError(self.file, line, col, message) from None
        if root is None:
            message = "the file is empty; a job needs at least prompt, checkpoint and seed (see docs/job-spec.md)"
            raise SpecError(self.file, 1, 1, message)
        if not isinstance(root, MappingNode):
            got = _kind(self.plain(root))
            raise self.error(root, f"expected a mapping of keys like 'prompt: ...', got {got}")
        return root

    def keys(
        self, node: Node, known: Sequence[str], where: str, aliases: dict[str, str] | None = None
    ) -> dict[str, tuple[Node, Node]]:
        """canonical key -> (key node, value node), rejecting unknown and repeated keys."""
        aliases = aliases or {}
        if not isinstance(node, MappingNode):
            got = _kind(self.plain(node))
            raise self.error(node, f"{where}: expected a mapping with keys {', '.join(known)}, got {got}")
        found: dict[str, tuple[Node, Node]] = {}
        written: dict[str, str] = {}
        for key_node, value_node in node.value:
            key = self.plain(key_node) if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, str):
                raise self.error(key_node, f"{where}: keys must be names, got {_kind(key)}")
            canon = aliases.get(key, key)
            if canon not in known:
                guess = difflib.get_close_matches(key, [*known, *aliases], n=1, cutoff=0.6)
                hint = f" (did you mean '{guess[0]}'?)" if guess else ""
                raise self.error(key_node, f"unknown key '{key}' in {where}{hint}; known keys: {', '.join(known)}")
            if canon in found:
                also = "" if written[canon] == key else f" (as '{written[canon]}')"
                raise self.error(key_node, f"'{key}' is already given{also} in {where}; keep one")
            found[canon], written[canon] = (key_node, value_node), key
        return found

    def integer(self, node: Node, what: str, lo: int | None = None) -> int:
        v = self.plain(node)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(node, f"{what}: expected a whole number, got {_kind(v)}")
        if lo is not None and v < lo:
            raise self.error(node, f"{what}: must be at least {lo}, got {v}")
        return v

    def text(self, node: Node, what: str) -> str:
        v = self.plain(node)
        if not isinstance(v, str):
            raise self.error(node, f"{what}: expected text, got {_kind(v)}")
        return v

    def texts(self, node: Node, axis: str, expect: str, split: bool = False) -> list[tuple[str, Node]]:
        """A text axis: one string or a list of them; `split` also splits "a, b" like A1111."""
        items = node.value if isinstance(node, SequenceNode) else [node]
        if not items:
            raise self.error(node, f"{axis}: the list is empty; give {expect}")
        out = []
        for item in items:
            v = self.plain(item)
            if not isinstance(v, str):
                quote = " (put it in quotes)" if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
                raise self.error(item, f"{axis}: expected {expect}, got {_kind(v)}{quote}")
            values = _csv(v) if split else [v]
            if not values:
                raise self.error(item, f"{axis}: empty value; give {expect}")
            out += [(value, item) for value in values]
        return out

    def unique(self, seq: Sequence, node: Node, axis: str) -> None:
        if len(seq) > _UNIQUE_CHECK_UP_TO:
            return
        seen = set()
        for v in seq:
            if v in seen:
                shown = f"'{v}'" if isinstance(v, str) else _num(v)
                message = f"{axis}: the value {shown} comes twice; it would render the same images again: list it once"
                self.repeats.setdefault(axis, self.error(node, message))
                return
            seen.add(v)

    def check_repeats(self, dims: list[tuple[str, ...]], values: dict, combine_node: Node | None) -> None:
        """A value may repeat in a zipped axis (`(seed, cfg)`: 1 with 5, 1 with 7) as long as no
        combination repeats; anywhere else a repeat would render the same images twice."""
        grouped = {a for group in dims for a in group}
        for axis, error in self.repeats.items():
            if axis not in grouped:
                raise error
        for group in dims:
            repeated = [a for a in group if a in self.repeats]
            if not repeated:
                continue
            if len(group) == 1:
                raise self.repeats[repeated[0]]
            seqs = [values[a] for a in group]
            if len(seqs[0]) > _UNIQUE_CHECK_UP_TO:
                continue
            seen = set()
            for combination in zip(*seqs):
                if combination in seen:
                    shown = ", ".join(f"'{v}'" if isinstance(v, str) else _num(v) for v in combination)
                    message = (f"combine: the zipped values ({shown}) of ({', '.join(group)}) come twice; "
                               "they would render the same images again")
                    raise self.error(combine_node, message)
                seen.add(combination)

    # ---- numeric axes ------------------------------------------------------------------------
    _EXPECT = {
        int: "a whole number, a list, or a range like 1-10, 1-10 (+2), 10-1 (-3), 1-10 [5]",
        float: "a number, a list, or a range like 5-7, 5-7 (+0.5), 1-2 [3]",
    }
    _BOUND_HINT = {
        "seed": " (A1111's -1 'random' is not supported: seedfarm needs fixed seeds so a re-run finds its images)",
        "clip_skip": " (A1111's Clip skip runs from 1, no skip, to 12)",
    }

    def numbers(self, node: Node, axis: str, kind: type, lo: float, hi: float) -> Sequence:
        """A numeric axis: a number, a range string, a comma list, a list of those, or (ints)
        a mapping {start, count, step}. Ranges stay lazy."""
        if isinstance(node, MappingNode) and kind is int:
            seq = self.start_count(node, axis)
            self.bounds(seq, node, axis, lo, hi)
            return seq
        items = node.value if isinstance(node, SequenceNode) else [node]
        if not items:
            raise self.error(node, f"{axis}: the list is empty; give {self._EXPECT[kind]}")
        parts: list[Sequence] = []
        for item in items:
            v = self.plain(item)
            if isinstance(v, str):
                try:
                    item_parts = parse_list(v, kind)
                except RangeError as e:
                    raise self.error(item, f"{axis}: {e}") from None
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or isinstance(v, int)):
                item_parts = [[kind(v)]]
            else:
                raise self.error(item, f"{axis}: expected {self._EXPECT[kind]}; got {_kind(v)}")
            for part in item_parts:
                self.bounds(part, item, axis, lo, hi)
            parts += item_parts
        seq = concat(parts)
        self.unique(seq, node, axis)
        return seq

    def bounds(self, part: Sequence, node: Node, axis: str, lo: float, hi: float) -> None:
        """Checks the ends of a monotonic part (a number, a range) against [lo, hi]."""
        ends = (part[0], part[-1])
        if not all(math.isfinite(v) for v in ends):
            raise self.error(node, f"{axis}: expected a finite number, got {ends[0]}")
        if min(ends) < lo or max(ends) > hi:
            bad = min(ends) if min(ends) < lo else max(ends)
            hint = self._BOUND_HINT.get(axis, "")
            raise self.error(node, f"{axis}: {_num(bad)} is out of range; expected {_num(lo)} to {_num(hi)}{hint}")

    def start_count(self, node: MappingNode, axis: str) -> range:
        fields = self.keys(node, ("start", "count", "step"), f"{axis} (a mapping {{start, count, step}})")
        for need in ("start", "count"):
            if need not in fields:
                raise self.error(node, f"{axis}: missing '{need}'; write e.g. {{start: 1000, count: 64}}")
        start = self.integer(fields["start"][1], f"{axis}.start")
        count = self.integer(fields["count"][1], f"{axis}.count", lo=1)
        step = self.integer(fields["step"][1], f"{axis}.step") if "step" in fields else 1
        if step == 0:
            raise self.error(fields["step"][1], f"{axis}.step: must not be 0")
        return range(start, start + count * step, step)

    # ---- text axes ---------------------------------------------------------------------------
    def prompts(self, node: Node, matrix: bool) -> Sequence:
        items = self.texts(node, "prompt", "the prompt text")
        if not matrix:
            seq: Sequence = [text for text, _ in items]
        else:
            parts = []
            for text, item in items:
                n = text.count("|")
                if n > MAX_MATRIX_PARTS:
                    message = f"prompt: {n} matrix parts make 2^{n} prompts; use at most {MAX_MATRIX_PARTS}"
                    raise self.error(item, message)
                parts.append(PromptMatrix(text))
            seq = concat(parts)
        self.unique(seq, node, "prompt")
        return seq

    def prompt_sr(self, node: Node, prompts: Sequence, negatives: Sequence) -> list[str]:
        # A YAML list keeps each value whole (commas allowed); one string is split like A1111's.
        split = not isinstance(node, SequenceNode)
        items = self.texts(node, "prompt_sr", "the text to search for, then its replacements", split=split)
        search, first = items[0]
        if not search:
            raise self.error(first, "prompt_sr: the first value is the text to search for and must not be empty")
        values = [v for v, _ in items]
        self.unique(values, node, "prompt_sr")
        # A1111 requires the search text in every render's prompt or negative prompt.
        bad_prompt = next((p for p in prompts if search not in p), None)
        bad_negative = next((n for n in negatives if search not in n), None)
        if bad_prompt is not None and bad_negative is not None:
            negative = f"nor the negative prompt '{bad_negative}'" if bad_negative else "(the negative is empty)"
            raise self.error(
                first,
                f"prompt_sr: '{search}' is not in the prompt '{bad_prompt}' {negative}; the first value is "
                "the text to search for and must occur in every prompt (or negative prompt): add it there "
                "or change the first value",
            )
        return values

    def checkpoints(self, node: Node, models_dir: Path | None) -> tuple[list[str], dict[str, Path]]:
        names, files = [], {}
        for text, item in self.texts(node, "checkpoint", "a checkpoint name (file stem)", split=True):
            name = text.removesuffix(".safetensors").removesuffix(".ckpt")
            if models_dir is not None:
                try:
                    files[name] = resolve_checkpoint(name, models_dir)
                except ValueError as e:
                    # A hub id (org/name) in no models folder is the worker's to fetch: it has no
                    # file here to hash (its tasks carry no hash) nor to read the family from.
                    if not Registry(models_dir).is_hub_id(name):
                        raise self.error(item, str(e)) from None
            names.append(name)
        self.unique(names, node, "checkpoint")
        return names, files

    def lora_tags(self, f: dict, models_dir: Path) -> None:
        """Every `<lora:NAME...>` (and `<lyco:...>`) a render will apply must resolve in the models
        folder, or the job fails here instead of task by task at render time. The tags come from
        the prompt values (a matrix prompt's parts included) and from the prompts as prompt_sr
        rewrites them (a replacement may be, or change, a LoRA name). Negative prompts' tags are
        not applied (A1111), so not checked. Names are resolved as the worker does."""
        registry = Registry(models_dir)
        files = registry.files("lora")  # one scan; resolve() only for names not found by name
        problems: dict[str, str | None] = {}  # name -> why it does not resolve (None: it does)

        def check(text: str, node: Node, where: str = "") -> None:
            try:
                refs = lora_refs(extract_extra_networks(text)[1])
            except ValueError as e:  # a weight that is no number
                raise self.error(node, f"prompt: {e}") from None
            for ref in refs:
                if ref.name not in problems:
                    problems[ref.name] = None
                    if ref.name not in files:
                        try:
                            registry.resolve("lora", ref.name, label="LoRA")
                        except ModelFileError as e:
                            problems[ref.name] = str(e)
                if problems[ref.name]:
                    raise self.error(node, problems[ref.name] + where, _tag_offset(self.plain(node), ref.name))

        prompts = self.texts(f["prompt"][1], "prompt", "the prompt text")
        for text, node in prompts:
            check(text, node)
        if "prompt_sr" in f:
            sr = f["prompt_sr"][1]
            values = self.texts(sr, "prompt_sr", "text", split=not isinstance(sr, SequenceNode))
            search = values[0][0]
            for value, node in values[1:]:
                for text, _ in prompts:
                    replaced = text.replace(search, value)
                    if replaced != text:
                        check(replaced, node, f" (in the prompt prompt_sr makes with '{value}')")

    def model_names(self, node: Node, kind: str, models_dir: Path | None) -> tuple[list[str], dict[str, Path]]:
        """A vae or lora axis: file stems (or None), checked against the models folder if given."""
        names, files = [], {}
        for text, item in self.texts(node, kind, f"a {kind} name (file stem) or {NO_MODEL}", split=True):
            name = NO_MODEL if text.lower() in ("none", "automatic") else re.sub(r"\.(safetensors|ckpt|pt)$", "", text)
            if models_dir is not None and name != NO_MODEL:
                try:
                    files[name] = Registry(models_dir).resolve(kind, name).path
                except ValueError as e:
                    raise self.error(item, str(e)) from None
            names.append(name)
        self.unique(names, node, kind)
        return names, files

    def samplers(self, node: Node) -> list[str]:
        names = []
        expect = "an A1111 sampler name like 'Euler a' or 'DPM++ 2M Karras'"
        for text, item in self.texts(node, "sampler", expect, split=True):
            try:
                names.append(display_name(*parse_sampler(text)))
            except ValueError as e:
                raise self.error(item, str(e)) from None
        self.unique(names, node, "sampler")
        return names

    def schedules(self, node: Node) -> list[str]:
        lookup = {s.lower(): s for s in SCHEDULE_TYPES}
        names = []
        for text, item in self.texts(node, "schedule", "an A1111 schedule type like 'Karras'", split=True):
            if text.lower() not in lookup:
                guess = difflib.get_close_matches(text, SCHEDULE_TYPES, n=1)
                hint = f" (did you mean '{guess[0]}'?)" if guess else ""
                valid = ", ".join(SCHEDULE_TYPES)
                raise self.error(item, f"schedule: unknown schedule type '{text}'{hint}; valid: {valid}")
            names.append(lookup[text.lower()])
        self.unique(names, node, "schedule")
        return names

    def sizes(self, node: Node, axis: str = "size") -> list[str]:
        sizes = []
        for text, item in self.texts(node, axis, "WIDTHxHEIGHT like 512x768", split=True):
            m = _SIZE.fullmatch(text)
            if m is None:
                raise self.error(item, f"{axis}: expected WIDTHxHEIGHT like 512x768, got '{text}'")
            for v in (int(m[1]), int(m[2])):
                self.pixels(v, item, axis)
            sizes.append(f"{int(m[1])}x{int(m[2])}")
        self.unique(sizes, node, axis)
        return sizes

    def rng_sources(self, node: Node) -> list[str]:
        names = []
        for text, item in self.texts(node, "rng", "an RNG source: cpu or nv", split=True):
            if text.lower() not in RNG_SOURCES:
                why = " (GPU noise differs between GPU makers; nv reproduces NVIDIA's)" if text.lower() == "gpu" else ""
                raise self.error(item, f"rng: unknown RNG source '{text}'{why}; valid: cpu, nv")
            names.append(text.lower())
        self.unique(names, node, "rng")
        return names

    def pixels(self, v: int, node: Node, axis: str) -> None:
        if v % 8:
            lower = v - v % 8
            message = f"{axis}: {v} is not a multiple of 8, as Stable Diffusion needs; use {lower} or {lower + 8}"
            raise self.error(node, message)

    # ---- the whole spec ------------------------------------------------------------------------
    def parse(self, models_dir: Path | None, known: dict[str, str] | None = None) -> JobSpec:
        """known: a job record's checkpoint_hashes (it also pins each checkpoint's family)."""
        root = self.compose()
        f = self.keys(root, [*AXIS_ORDER, *OTHER_KEYS], "the job spec", ALIASES)
        for need in REQUIRED:
            if need not in f:
                needs = ", ".join(REQUIRED)
                raise self.error(root, f"missing key '{need}': a job needs {needs} (see docs/job-spec.md)")

        if "version" in f:
            version = self.plain(f["version"][1])
            if isinstance(version, bool) or version != SPEC_VERSION:
                message = f"version: this seedfarm reads job spec version {SPEC_VERSION}; got {_kind(version)}"
                raise self.error(f["version"][1], message)
        name = self.name(f)
        matrix = False
        if "prompt_matrix" in f:
            matrix = self.plain(f["prompt_matrix"][1])
            if not isinstance(matrix, bool):
                message = f"prompt_matrix: expected true or false, got {_kind(matrix)}"
                raise self.error(f["prompt_matrix"][1], message)
        batch_size = self.integer(f["batch_size"][1], "batch_size", lo=1) if "batch_size" in f else 1

        values: dict[str, Sequence] = {}
        values["prompt"] = self.prompts(f["prompt"][1], matrix)
        if "negative_prompt" in f:
            node = f["negative_prompt"][1]
            values["negative_prompt"] = [t for t, _ in self.texts(node, "negative_prompt", "the negative prompt text")]
            self.unique(values["negative_prompt"], node, "negative_prompt")
        if "prompt_sr" in f:
            negatives = values.get("negative_prompt", DEFAULTS["negative_prompt"])
            values["prompt_sr"] = self.prompt_sr(f["prompt_sr"][1], values["prompt"], negatives)
        values["seed"] = self.numbers(f["seed"][1], "seed", int, 0, 2**64 - 1)
        values["checkpoint"], checkpoint_files = self.checkpoints(f["checkpoint"][1], models_dir)
        if models_dir is not None:
            self.lora_tags(f, models_dir)
        vae_files: dict[str, Path] = {}
        if "vae" in f:
            values["vae"], vae_files = self.model_names(f["vae"][1], "vae", models_dir)
        if "lora" in f:
            values["lora"], _ = self.model_names(f["lora"][1], "lora", models_dir)
        if "lora_weight" in f:
            if "lora" not in f:
                message = "lora_weight: sweeps the weight of the 'lora' axis, and there is none; add lora: NAME"
                raise self.error(f["lora_weight"][0], message)
            values["lora_weight"] = self.numbers(f["lora_weight"][1], "lora_weight", float, -10, 10)
        if "sampler" in f:
            values["sampler"] = self.samplers(f["sampler"][1])
        if "schedule" in f:
            values["schedule"] = self.schedules(f["schedule"][1])
        if "steps" in f:
            values["steps"] = self.numbers(f["steps"][1], "steps", int, 1, 10_000)
        if "cfg" in f:
            values["cfg"] = self.numbers(f["cfg"][1], "cfg", float, 0, 100)
        if "clip_skip" in f:
            values["clip_skip"] = self.numbers(f["clip_skip"][1], "clip_skip", int, 1, 12)
        if "rng" in f:
            values["rng"] = self.rng_sources(f["rng"][1])
        if "variation_seed" in f:
            values["variation_seed"] = self.numbers(f["variation_seed"][1], "variation_seed", int, 0, 2**64 - 1)
        if "variation_strength" in f:
            if "variation_seed" not in f:
                message = "variation_strength: needs a variation_seed to blend towards (A1111's 'Variation seed')"
                raise self.error(f["variation_strength"][0], message)
            values["variation_strength"] = self.numbers(f["variation_strength"][1], "variation_strength", float, 0, 1)
        if "seed_resize_from" in f:
            values["seed_resize_from"] = self.sizes(f["seed_resize_from"][1], "seed_resize_from")
        self.size_axes(f, values)
        if "size" not in values and "width" not in values:
            values["size"] = [family_size(values["checkpoint"], checkpoint_files, known or {})]
        for axis, default in DEFAULTS.items():
            if axis not in values:
                values[axis] = list(default)
        self.sampler_schedule_pairs(f, values)

        if "combine" in f:
            dims = self.combine(f["combine"][1], values)
        else:
            dims = [(a,) for a in AXIS_ORDER if a in values]
        self.check_repeats(dims, values, f["combine"][1] if "combine" in f else None)
        ordered = {a: values[a] for group in dims for a in group}
        grid_x, grid_y = self.grid(f["grid"][1], ordered) if "grid" in f else (None, None)
        folder, filename = self.output(f["output"][1]) if "output" in f else (None, DEFAULT_FILENAME)
        priority = self.priority(f["priority"][1]) if "priority" in f else "normal"
        requires = tuple(t for t, _ in self.texts(f["requires"][1], "requires", "worker tags")) if "requires" in f else ()

        # The job id hashes what the job renders (not its comments or key spelling), so the
        # same sweep maps to the same job folder and a re-run renders only what is missing.
        content = {
            "v": SPEC_VERSION,
            "dims": [[[a, _canonical(ordered[a])] for a in group] for group in dims],
            "batch_size": batch_size,
            "filename": filename,
        }
        digest = hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        return JobSpec(
            name=name, job_id=folder or f"{name}-{digest[:8]}", source_text=self.source, file=self.file,
            batch_size=batch_size, grid_x=grid_x, grid_y=grid_y, filename=filename,
            values=ordered, dims=tuple(dims), checkpoint_files=checkpoint_files, vae_files=vae_files,
            priority=priority, requires=requires,
        )

    def priority(self, node: Node) -> str:
        value = self.plain(node)
        if value not in ("high", "normal", "low"):
            raise self.error(node, f"priority: expected high, normal or low, got {_kind(value)}")
        return value

    def name(self, f: dict) -> str:
        if "name" in f:
            name = self.text(f["name"][1], "name")
            if not _SAFE_NAME.fullmatch(name):
                message = f"name: '{name}' cannot be a folder name; use letters, digits, '.', '_' and '-'"
                raise self.error(f["name"][1], message)
            return name
        # The file stem, made safe: it becomes part of the job folder's name.
        return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(self.file).stem).strip("-.") or "job"

    def size_axes(self, f: dict, values: dict) -> None:
        if "size" in f and ("width" in f or "height" in f):
            other = "width" if "width" in f else "height"
            message = f"give either size (e.g. 512x768) or width/height, not both; remove '{other}' or 'size'"
            raise self.error(f[other][0], message)
        if "size" in f:
            values["size"] = self.sizes(f["size"][1])
        elif "width" in f or "height" in f:
            for axis in ("width", "height"):
                if axis not in f:
                    values[axis] = [512]
                    continue
                values[axis] = self.numbers(f[axis][1], axis, int, 8, 16384)
                for v in values[axis]:
                    self.pixels(v, f[axis][1], axis)

    def sampler_schedule_pairs(self, f: dict, values: dict) -> None:
        """Every sampler must accept every schedule type it is swept with."""
        for sampler in values["sampler"]:
            for schedule in values["schedule"]:
                try:
                    parse_sampler(sampler, schedule)
                except ValueError as e:
                    raise self.error(f["schedule"][1] if "schedule" in f else f["sampler"][1], str(e)) from None

    def combine(self, node: Node, values: dict) -> list[tuple[str, ...]]:
        """`(prompt, seed) * checkpoint * cfg`: terms joined by *, outermost first; a term in
        parentheses zips axes of equal length. Unnamed axes must be fixed; they go first."""
        text = self.text(node, "combine")
        usage = "write axes joined by * with zipped axes in parentheses, e.g. (prompt, seed) * cfg"
        groups: list[tuple[str, ...]] = []
        group: list[str] | None = None  # the zip group being read, inside ( )
        want_axis = True  # next comes an axis name or '(', not an operator
        for m in re.finditer(r"[A-Za-z_]+|\S", text):
            token, at = m[0], m.start()
            if want_axis and re.fullmatch(r"[A-Za-z_]+", token):
                axis = self.axis_name(node, token, values, "combine", at)
                if any(axis in g for g in groups) or (group and axis in group):
                    raise self.error(node, f"combine: '{token}' appears twice; name each axis once", at)
                if group is None:
                    groups.append((axis,))
                else:
                    group.append(axis)
                want_axis = False
            elif want_axis and token == "(" and group is None:
                group = []
            elif not want_axis and token == "," and group is not None:
                want_axis = True
            elif not want_axis and token == ")" and group is not None:
                groups.append(tuple(group))
                group = None
            elif not want_axis and token == "*" and group is None:
                want_axis = True
            else:
                raise self.error(node, f"combine: unexpected '{token}'; {usage}", at)
        if want_axis or group is not None:
            raise self.error(node, f"combine: the expression is incomplete; {usage}", len(text.rstrip()))
        for g in groups:
            lengths = {a: len(values[a]) for a in g}
            if len(set(lengths.values())) > 1:
                counts = ", ".join(f"{a} has {n:,}" for a, n in lengths.items())
                message = f"combine: zipped axes ({', '.join(g)}) need the same number of values; {counts}"
                raise self.error(node, message)
        named = {a for g in groups for a in g}
        missing = [a for a in values if len(values[a]) > 1 and a not in named]
        if missing:
            add = ", ".join(missing)
            message = f"combine: every swept axis must appear once; add {add} (e.g. '... * {missing[0]}')"
            raise self.error(node, message)
        fixed = [(a,) for a in AXIS_ORDER if a in values and a not in named]
        return fixed + groups

    def axis_name(self, node: Node, word: str, values: dict, what: str, at: int | None = None) -> str:
        """The canonical axis a name (or alias) in combine/grid refers to."""
        axis = ALIASES.get(word, word)
        if axis not in values:
            guess = difflib.get_close_matches(word, list(values), n=1)
            hint = f" (did you mean '{guess[0]}'?)" if guess else ""
            raise self.error(node, f"{what}: '{word}' is not an axis of this job{hint}; axes: {', '.join(values)}", at)
        return axis

    def grid(self, node: Node, values: dict) -> tuple[str | None, str | None]:
        fields = self.keys(node, ("x", "y"), "grid")
        picked = []
        for key in ("x", "y"):
            if key not in fields:
                picked.append(None)
                continue
            word = self.text(fields[key][1], f"grid.{key}")
            picked.append(self.axis_name(fields[key][1], word, values, f"grid.{key}"))
        if picked[0] and picked[0] == picked[1]:
            raise self.error(fields["y"][1], f"grid: x and y are both '{picked[0]}'; pick two different axes")
        return picked[0], picked[1]

    def output(self, node: Node) -> tuple[str | None, str]:
        fields = self.keys(node, ("folder", "filename"), "output")
        folder = None
        if "folder" in fields:
            folder = self.text(fields["folder"][1], "output.folder")
            if not _SAFE_NAME.fullmatch(folder):
                message = f"output.folder: '{folder}' must be one folder name of letters, digits, '.', '_' and '-'"
                raise self.error(fields["folder"][1], message)
        filename = DEFAULT_FILENAME
        if "filename" in fields:
            filename = self.text(fields["filename"][1], "output.filename")
            problem = filename_pattern_problem(filename)
            if problem:
                raise self.error(fields["filename"][1], f"output.filename: {problem}")
        return folder, filename
