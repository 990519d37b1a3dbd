"""The `combine` mini-language (which axes are zipped, in what order) and the axis names that
`combine` and `grid` refer to."""

from __future__ import annotations

import difflib
import re

from yaml.nodes import Node

from farm.params import ALIASES, AXIS_ORDER
from farm.spec.nodes import NodeReader


class CombineReader(NodeReader):
    """Reads `combine` and `grid`."""

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
            axis = self.axis_name(fields[key][1], word, values, f"grid.{key}")
            if len(values[axis]) < 2:
                message = f"grid.{key}: '{word}' has one value in this job; a grid axis must be swept (a list or a range)"
                raise self.error(fields[key][1], message)
            picked.append(axis)
        if picked[0] and picked[0] == picked[1]:
            raise self.error(fields["y"][1], f"grid: x and y are both '{picked[0]}'; pick two different axes")
        return picked[0], picked[1]
