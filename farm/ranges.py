"""A1111 X/Y/Z range strings: `1-5`, `1-10 (+2)`, `10-1 (-3)`, `1-10 [5]`, `5-7 (+0.5)`, `1-2 [3]`.

Ranges stay lazy (a Python `range` or a small Sequence class) so `seed: 0-999999` costs a few bytes,
not a million ints: job expansion indexes into them directly.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate

_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
# start - end, then an optional step `(+2)` or an optional count `[5]`.
# re.ASCII: \d would also match fullwidth and other scripts' digits, which int() then reads.
_RANGE = re.compile(
    rf"\s*(?P<start>{_NUM})\s*-\s*(?P<end>{_NUM})\s*"
    rf"(?:\(\s*(?P<step>{_NUM})\s*\)|\[\s*(?P<count>{_NUM})\s*\])?\s*", re.ASCII
)
_SINGLE = re.compile(rf"\s*({_NUM})\s*", re.ASCII)
# Lists shorter than this are made concrete: cheap, and equal to the lists a user writes.
_MATERIALISE_UP_TO = 10_000


class RangeError(ValueError):
    """A malformed or empty range; the message says what was expected."""


class LazySequence(Sequence):
    """A read-only sequence whose items are computed from their index (`item`): slices and
    negative indexes as for a list, without building one."""

    def item(self, i: int):
        raise NotImplementedError

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.item(i)


class Progression(LazySequence):
    """value(i) = start + i*step, optionally cast to int (A1111's `int(x) for x in np.linspace`),
    with the last value pinned to `last` (linspace ends exactly at its stop). Lazy and exact."""

    def __init__(self, start: float, step: float, count: int, as_int: bool = False, last: float | None = None):
        self.start, self.step, self.count, self.as_int, self.last = start, step, count, as_int, last

    def __len__(self) -> int:
        return self.count

    def item(self, i: int):
        x = self.last if (i == self.count - 1 and self.last is not None) else i * self.step + self.start
        # int() truncates like A1111; floats are rounded so 0.1-steps do not print 0.30000000000000004.
        return int(x) if self.as_int else round(float(x), 10)

    def __repr__(self) -> str:
        return f"Progression({self.start!r}, {self.step!r}, {self.count}, as_int={self.as_int}, last={self.last!r})"


class Concat(LazySequence):
    """Several sequences one after another, indexable without copying them."""

    def __init__(self, parts: list[Sequence]):
        self.parts = parts
        self._ends = list(accumulate(len(p) for p in parts))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def item(self, i: int):
        k = bisect_right(self._ends, i)
        return self.parts[k][i - (self._ends[k - 1] if k else 0)]

    def __repr__(self) -> str:
        return f"Concat({self.parts!r})"


def safe_len(seq: Sequence) -> int:
    """len() that also works for a range longer than sys.maxsize (len() raises OverflowError)."""
    try:
        return len(seq)
    except OverflowError:
        r = seq
        return max(0, (r.stop - r.start + r.step - (1 if r.step > 0 else -1)) // r.step)


def certain_repeat(parts: list[Sequence]):
    """A value that surely comes twice in these monotonic parts, found without listing them (for
    axes too long to put in a set), else None: an int part with more values than whole numbers
    between its ends (`1-10 [2000000]`), or two overlapping parts counting by one."""
    spans = []
    for part in parts:
        n = safe_len(part)
        if n < 2:
            spans.append((part[0], part[0], 1)) if n else None
            continue
        lo, hi = sorted((part[0], part[-1]))
        step = part.step if isinstance(part, range) else getattr(part, "step", None)
        if isinstance(part, Progression) and part.as_int and hi - lo + 1 < n:
            return part[n - 1]
        if isinstance(part, Progression) and not part.as_int and part.step == 0:
            return part[0]
        spans.append((lo, hi, abs(step) if step is not None else None))
    spans.sort()
    for (lo1, hi1, s1), (lo2, hi2, s2) in zip(spans, spans[1:]):
        if lo2 <= hi1 and s1 == 1 and s2 == 1:
            return lo2
    return None


def concat(parts: list[Sequence]) -> Sequence:
    """One sequence from several: the part itself, a list when small, else a lazy Concat."""
    if len(parts) == 1:
        return parts[0]
    if sum(len(p) for p in parts) <= _MATERIALISE_UP_TO:
        return [x for p in parts for x in p]
    return Concat(parts)


def _number(text: str, kind: type, what: str) -> int | float:
    if kind is int:
        if not re.fullmatch(r"[+-]?\d+", text, re.ASCII):
            raise RangeError(f"{what} must be a whole number, got '{text}'")
        return int(text)
    return float(text)


def parse_range(text: str, kind: type = int) -> Sequence:
    """One item: a number (`7`) or a range. kind is int or float. Ends are inclusive in both
    directions; a range without a step counts by 1 towards its end."""
    m = _RANGE.fullmatch(text)
    if m is None:
        if _SINGLE.fullmatch(text):
            return [_number(text.strip(), kind, "the value")]
        hint = "1-10, 1-10 (+2), 10-1 (-3) or 1-10 [5]" if kind is int else "5-7, 5-7 (+0.5) or 1-2 [3]"
        raise RangeError(f"'{text.strip()}' is neither a number nor a range like {hint}")
    start = _number(m["start"], kind, "a range start")
    end = _number(m["end"], kind, "a range end")
    if m["count"] is not None:
        count = _number(m["count"], int, "a range count in [ ]")
        if count < 1:
            raise RangeError(f"'{text.strip()}' asks for {count} values; the count in [ ] must be at least 1")
        if count == 1:
            return [start]
        return Progression(start, (end - start) / (count - 1), count, as_int=kind is int, last=end)
    step = _number(m["step"], kind, "a range step") if m["step"] is not None else (1 if end >= start else -1)
    if step == 0:
        raise RangeError(f"'{text.strip()}' has step 0; use a step like (+1) or (-1)")
    if (end - start) * step < 0:
        sign = "-" if step > 0 else "+"
        raise RangeError(
            f"'{text.strip()}' is empty: step {step:+g} never reaches {end:g} from {start:g}; "
            f"use a step like ({sign}{abs(step):g})"
        )
    if kind is int:
        return range(start, end + (1 if step > 0 else -1), step)
    # floor with a little slack: 0.5-1.5 (+0.25) must include 1.5 despite float error.
    count = math.floor((end - start) / step + 1e-9) + 1
    return Progression(float(start), float(step), count)


def parse_list(text: str, kind: type = int) -> list[Sequence]:
    """A1111's X/Y/Z value list: comma-separated numbers and ranges (`5, 7, 9`, `1-4, 10-12`).
    Returns one sequence per item (each monotonic), so callers can check bounds per item."""
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise RangeError("the value list is empty; give at least one number or range")
    return [parse_range(t, kind) for t in items]


def parse_values(text: str, kind: type = int) -> Sequence:
    """parse_list joined into one sequence (lazy when large)."""
    return concat(parse_list(text, kind))
