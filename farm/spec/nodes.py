"""YAML-node plumbing for the spec parser: located errors and reading plain values off nodes.

Validation walks PyYAML's node tree (yaml.compose) instead of plain loaded data, so every error can
name the file, line and column of the offending value: `jobs/x.yaml:7:9: seed: ...`.
"""

from __future__ import annotations

import csv
import difflib
from collections.abc import Sequence
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from farm.ranges import certain_repeat, safe_len

# Limits that keep a hostile or mistyped spec bounded in time and memory (docs/job-spec.md "Limits").
MAX_SPEC_BYTES = 1_000_000  # a spec file; the largest real sweeps are a few kB
MAX_TEXT_CHARS = 20_000  # one prompt (or any text value): A1111 prompts of 75 x 100 tokens fit
MAX_AXIS_VALUES = 10_000_000  # values on one axis
MAX_JOB_TASKS = 10_000_000  # tasks in one job: months of rendering on a farm of gaming PCs
MAX_NAME_CHARS = 100  # a job name or output folder: part of file names (255 bytes at most)
_UNIQUE_CHECK_UP_TO = 100_000  # longer axes are ranges (seldom repeating); a set of millions costs too much


class SpecError(Exception):
    """A spec problem, as one line: FILE:LINE:COL: message (1-based line and column)."""

    def __init__(self, file: str, line: int, col: int, message: str):
        self.file, self.line, self.col = file, line, col
        self.message = " ".join(message.splitlines())  # one line, always
        super().__init__(f"{file}:{line}:{col}: {self.message}")


def show_number(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def kind(value: Any) -> str:
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


def csv_words(text: str) -> list[str]:
    """A1111's X/Y/Z list of words: comma separated, with "quotes" around values holding commas."""
    return [v.strip() for v in next(csv.reader([text], skipinitialspace=True), []) if v.strip()]


class NodeReader:
    """Reads one spec text: knows the file name for errors and the YAML loader that turns nodes
    into plain values, and collects values listed twice (see check_repeats)."""

    def __init__(self, text: str, filename: str):
        self.source, self.file = text, filename
        self.loader: yaml.SafeLoader | None = None  # made in compose(): it may reject the text
        # axis -> the error for a value listed twice; raised unless the axis is zipped with others
        # and the zipped combinations are all different (checked once `combine` is known)
        self.repeats: dict[str, SpecError] = {}

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
        if len(self.source) > MAX_SPEC_BYTES:
            raise SpecError(self.file, 1, 1, f"the spec is {len(self.source):,} characters; the limit is "
                                             f"{MAX_SPEC_BYTES:,} (a prompt may hold {MAX_TEXT_CHARS:,})")
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
        except RecursionError:
            raise SpecError(self.file, 1, 1, "YAML nested too deeply; a job spec is a flat mapping") from None
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
            got = kind(self.plain(root))
            raise self.error(root, f"expected a mapping of keys like 'prompt: ...', got {got}")
        return root

    def keys(
        self, node: Node, known: Sequence[str], where: str, aliases: dict[str, str] | None = None
    ) -> dict[str, tuple[Node, Node]]:
        """canonical key -> (key node, value node), rejecting unknown and repeated keys."""
        aliases = aliases or {}
        if not isinstance(node, MappingNode):
            got = kind(self.plain(node))
            raise self.error(node, f"{where}: expected a mapping with keys {', '.join(known)}, got {got}")
        found: dict[str, tuple[Node, Node]] = {}
        written: dict[str, str] = {}
        for key_node, value_node in node.value:
            key = self.plain(key_node) if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, str):
                raise self.error(key_node, f"{where}: keys must be names, got {kind(key)}")
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
            raise self.error(node, f"{what}: expected a whole number, got {kind(v)}")
        if lo is not None and v < lo:
            raise self.error(node, f"{what}: must be at least {lo}, got {v}")
        return v

    def text(self, node: Node, what: str) -> str:
        v = self.plain(node)
        if not isinstance(v, str):
            raise self.error(node, f"{what}: expected text, got {kind(v)}")
        self.check_text(v, node, what)
        return v

    def check_text(self, v: str, node: Node, what: str) -> None:
        """Text that fits the farm: bounded, and encodable (YAML's "\\ud800" makes a lone surrogate)."""
        if len(v) > MAX_TEXT_CHARS:
            raise self.error(node, f"{what}: {len(v):,} characters; the limit is {MAX_TEXT_CHARS:,}")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as e:
            raise self.error(node, f"{what}: character #{e.start + 1} is a lone surrogate "
                                   f"(\\u{ord(v[e.start]):04x}), not text") from None

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
                raise self.error(item, f"{axis}: expected {expect}, got {kind(v)}{quote}")
            self.check_text(v, item, axis)
            values = csv_words(v) if split else [v]
            if not values:
                raise self.error(item, f"{axis}: empty value; give {expect}")
            out += [(value, item) for value in values]
        return out

    def unique(self, seq: Sequence, node: Node, axis: str) -> None:
        if safe_len(seq) > _UNIQUE_CHECK_UP_TO:  # too long for a set: the repeats ranges make for sure
            v = certain_repeat(getattr(seq, "parts", [seq]))
            if v is not None:
                message = f"{axis}: the value {show_number(v)} comes twice; it would render the same images again: list it once"
                self.repeats.setdefault(axis, self.error(node, message))
            return
        seen = set()
        for v in seq:
            if v in seen:
                shown = f"'{v}'" if isinstance(v, str) else show_number(v)
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
                    shown = ", ".join(f"'{v}'" if isinstance(v, str) else show_number(v) for v in combination)
                    message = (f"combine: the zipped values ({shown}) of ({', '.join(group)}) come twice; "
                               "they would render the same images again")
                    raise self.error(combine_node, message)
                seen.add(combination)
