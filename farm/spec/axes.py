"""The axis value readers: numbers and ranges, prompts (and A1111's prompt matrix), Prompt S/R,
samplers, schedule types, sizes and RNG sources; each error names the value's FILE:LINE:COL."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Sequence

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from farm.hires import upscaler_name
from farm.ranges import LazySequence, RangeError, concat, parse_list, safe_len
from farm.samplers import SCHEDULE_TYPES, display_name, parse_sampler
from farm.spec.nodes import MAX_AXIS_VALUES, NodeReader, show_number
from farm.spec.nodes import kind as describe

RNG_SOURCES = ("cpu", "nv")  # A1111's "GPU" source differs between GPU makers: not offered
MAX_MATRIX_PARTS = 16  # 2^16 prompts per matrix prompt is already far past any useful grid
_SIZE = re.compile(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", re.ASCII)
MAX_SIDE = 16384  # pixels a side, as for width and height


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


class AxisReader(NodeReader):
    """Reads the value of one axis key into its sequence of values."""

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
            self.size_limit(seq, node, axis)
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
                raise self.error(item, f"{axis}: expected {self._EXPECT[kind]}; got {describe(v)}")
            for part in item_parts:
                self.size_limit(part, item, axis)
                self.bounds(part, item, axis, lo, hi)
            parts += item_parts
        seq = concat(parts)
        self.unique(seq, node, axis)
        return seq

    def size_limit(self, part: Sequence, node: Node, axis: str) -> None:
        if safe_len(part) > MAX_AXIS_VALUES:
            raise self.error(node, f"{axis}: {safe_len(part):,} values; an axis holds at most {MAX_AXIS_VALUES:,}")

    def bounds(self, part: Sequence, node: Node, axis: str, lo: float, hi: float) -> None:
        """Checks the ends of a monotonic part (a number, a range) against [lo, hi]."""
        ends = (part[0], part[-1])
        if not all(math.isfinite(v) for v in ends):
            raise self.error(node, f"{axis}: expected a finite number, got {ends[0]}")
        if min(ends) < lo or max(ends) > hi:
            bad = min(ends) if min(ends) < lo else max(ends)
            hint = self._BOUND_HINT.get(axis, "")
            expected = f"expected {show_number(lo)} to {show_number(hi)}{hint}"
            raise self.error(node, f"{axis}: {show_number(bad)} is out of range; {expected}")

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

    def samplers(self, node: Node, axis: str = "sampler") -> list[str]:
        names = []
        expect = "an A1111 sampler name like 'Euler a' or 'DPM++ 2M Karras'"
        for text, item in self.texts(node, axis, expect, split=True):
            try:
                names.append(display_name(*parse_sampler(text)))
            except ValueError as e:
                raise self.error(item, f"{axis}: {e}" if axis != "sampler" else str(e)) from None
        self.unique(names, node, axis)
        return names

    def schedules(self, node: Node, axis: str = "schedule") -> list[str]:
        lookup = {s.lower(): s for s in SCHEDULE_TYPES}
        names = []
        for text, item in self.texts(node, axis, "an A1111 schedule type like 'Karras'", split=True):
            if text.lower() not in lookup:
                guess = difflib.get_close_matches(text, SCHEDULE_TYPES, n=1)
                hint = f" (did you mean '{guess[0]}'?)" if guess else ""
                valid = ", ".join(SCHEDULE_TYPES)
                raise self.error(item, f"{axis}: unknown schedule type '{text}'{hint}; valid: {valid}")
            names.append(lookup[text.lower()])
        self.unique(names, node, axis)
        return names

    def upscalers(self, node: Node, models: Collection[str] | None = (), axis: str = "hr_upscaler"
                  ) -> list[tuple[str, Node]]:
        """hr_upscaler: A1111's hires upscaler names (farm/hires.py), or upscaler model names among
        `models` (None: not checked, no models folder here); with the node of each."""
        names = []
        for text, item in self.texts(node, axis, "an A1111 upscaler like 'Latent' or an upscaler model's name",
                                     split=True):
            try:
                names.append((upscaler_name(text, models), item))
            except ValueError as e:
                raise self.error(item, f"{axis}: {e}") from None
        self.unique([name for name, _ in names], node, axis)
        return names

    def sizes(self, node: Node, axis: str = "size") -> list[str]:
        sizes = []
        items = node.value if isinstance(node, SequenceNode) else [node]
        # YAML reads 0x0 and 0x1024 as hexadecimal numbers: such a scalar is read as written
        raw = [(item.value, item) for item in items if isinstance(item, ScalarNode) and _SIZE.fullmatch(item.value)]
        texts = raw if len(raw) == len(items) and items else self.texts(node, axis, "WIDTHxHEIGHT like 512x768",
                                                                            split=True)
        for text, item in texts:
            m = _SIZE.fullmatch(text)
            if m is None:
                raise self.error(item, f"{axis}: expected WIDTHxHEIGHT like 512x768, got '{text}'")
            for v in (int(m[1]), int(m[2])):
                # the bounds width and height have; a 0 side means "off" in seed_resize_from (0x0) and
                # "keep the aspect" in hr_resize (A1111's)
                if not (8 <= v <= MAX_SIDE or (v == 0 and axis in ("seed_resize_from", "hr_resize"))):
                    raise self.error(item, f"{axis}: {v} is out of range; expected 8 to {MAX_SIDE} pixels a side")
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
                values[axis] = self.numbers(f[axis][1], axis, int, 8, MAX_SIDE)
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
