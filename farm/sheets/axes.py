"""Which axes of a job's image records vary, which go on x and y, and filtering by value.

An axis is a key of the records' `axes` whose value differs between images. Values keep
expansion order, not alphabetical order.
"""

from __future__ import annotations

from farm.sheets.labels import format_value, value_id, value_texts


def in_expansion_order(records: list[dict]) -> list[dict]:
    return sorted(records, key=lambda r: (r["index"], r["seed"]))


def axis_values(records: list[dict]) -> dict[str, list[object]]:
    """Varying axis -> its distinct values, both in the order first seen in expansion order."""
    records = in_expansion_order(records)
    names: list[str] = []
    for record in records:
        names += [k for k in record["axes"] if k not in names]
    varying: dict[str, list[object]] = {}
    for name in names:
        seen: dict[str, object] = {}
        for record in records:
            value = record["axes"].get(name)
            seen.setdefault(value_id(value), value)
        if len(seen) > 1:
            varying[name] = list(seen.values())
    return varying


def choose_axes(records: list[dict], x: str | None = None, y: str | None = None) -> tuple[str | None, str | None]:
    """(x, y): the requested axes, checked, or by default the axis with the most values on x and
    the next on y. Either is None when fewer axes vary."""
    varying = axis_values(records)
    known = {k for r in records for k in r["axes"]}
    for which, axis in (("x", x), ("y", y)):
        if axis is not None and axis not in varying:
            why = "does not vary in this job" if axis in known else "is not an axis of this job"
            choices = ", ".join(varying) or "none"
            raise ValueError(f"cannot put '{axis}' on {which}: it {why}; axes that vary: {choices}")
    if x is not None and x == y:
        raise ValueError(f"x and y are both '{x}': choose two different axes")
    rest = sorted((a for a in varying if a not in (x, y)), key=lambda a: -len(varying[a]))
    if x is None and rest:
        x = rest.pop(0)
    if y is None and rest:
        y = rest.pop(0)
    return x, y


def filter_records(records: list[dict], filters: dict[str, str]) -> list[dict]:
    """The records whose axis values read as the given texts (`cfg=7`, `sampler=Euler a`; a prompt
    by its whole text or by the label part that differs)."""
    varying = axis_values(records)
    for axis, text in filters.items():
        if axis not in varying:
            raise ValueError(f"cannot filter on '{axis}': axes that vary: {', '.join(varying) or 'none'}")
        values = varying[axis]
        shown = value_texts(axis, values)
        wanted = {value_id(v) for v, short in zip(values, shown) if text in (format_value(v), short)}
        if not wanted:
            raise ValueError(f"no image has {axis}={text}; its values: {', '.join(shown)}")
        records = [r for r in records if value_id(r["axes"].get(axis)) in wanted]
    return records
