"""A1111 prompt syntax the worker reads when it encodes a prompt, in pure Python: emphasis
(parse_attention), composable AND (split_and), prompt editing and alternation (prompt_schedules).
Extra-network tags are taken out first (farm/prompts.py).

Re-implemented from the behaviour of A1111's modules/prompt_parser.py (A1111 is AGPL: no code
taken). User documentation: docs/prompts.md.
"""

from __future__ import annotations

import math
import re

# ---- emphasis: A1111's parse_prompt_attention -----------------------------------------------

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
# A weight beyond this is no longer a weight anyone means; clamping keeps every weight finite
# (A1111 itself would produce inf for `(x:1e999)` or 10,000 nested brackets).
WEIGHT_LIMIT = 1e6

# The emphasis tokens: escapes, brackets, `:number)` closing a weighted group, a run of plain
# text, or a lone `:` / `\` (both literal text).
_ATTENTION_TOKEN = re.compile(
    r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:"
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Pieces of `text` with their emphasis weights, as A1111's emphasis parser gives them:
    `(x)` x1.1, `(x:w)` xw, `[x]` /1.1, nesting multiplies, unclosed brackets run to the end,
    unmatched closers and escapes (`\\(`) are literal text, top-level `BREAK` is ("BREAK", -1.0),
    neighbours of equal weight are merged, and "" gives [("", 1.0)]."""
    pieces: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] = max(-WEIGHT_LIMIT, min(WEIGHT_LIMIT, piece[1] * factor))

    for match in _ATTENTION_TOKEN.finditer(text):
        token, number = match.group(0), match.group(1)
        weight = _finite(number) if number is not None else None
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])  # `\(` -> "(", a lone `\` -> ""
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open:
            multiply_from(round_open.pop(), weight)
        elif token == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i:
                    pieces.append(["BREAK", -1.0])
                pieces.append([part, 1.0])
    for start in round_open:
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply_from(start, SQUARE_MULTIPLIER)

    if not pieces:
        return [("", 1.0)]
    merged = [pieces[0]]
    for piece in pieces[1:]:
        if piece[1] == merged[-1][1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(t, float(w)) for t, w in merged]


# ---- composable AND ------------------------------------------------------------------------

_AND = re.compile(r"\bAND\b")
_SUBPROMPT_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """A1111's composable prompt: `a cat :1.2 AND a dog` -> [("a cat", 1.2), (" a dog", 1.0)].
    Each part is rendered as its own conditioning and the guided noise is their weighted sum."""
    parts = []
    for sub in _AND.split(prompt):
        text, number = _SUBPROMPT_WEIGHT.match(sub).groups()  # the pattern matches any text
        weight = _finite(number) if number else 1.0
        parts.append((text, weight) if weight is not None else (sub, 1.0))
    return parts


# ---- prompt editing and alternation: A1111's schedules -----------------------------------------
#
# A small recursive-descent parser for A1111's scheduling grammar. A parse is a list of nodes:
# str (text kept as written, emphasis syntax included), ("edit", before, after, when_text) and
# ("alt", [options]); before/after/options are node lists. As in A1111, `( ) [ ] :` that belong
# to no construct are plain text at the top level, and a prompt the grammar rejects (a stray `|`,
# a trailing backslash) is used unchanged for every step.

_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*\]")
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.DOTALL)


class _NoParse(Exception):
    pass


def _parse_inner(s: str, i: int) -> tuple[list, int]:
    """A `prompt` inside a construct: plain text, ( ), [ ], edits, alternations. Stops at a
    character only the enclosing construct may take (`: | ] )`)."""
    nodes: list = []
    while i < len(s):
        plain = _PLAIN.match(s, i)
        if plain:
            nodes.append(plain.group(0))
            i = plain.end()
        elif s[i] == "(":
            inner, j = _parse_inner(s, i + 1)
            text = ["("] + inner
            if j < len(s) and s[j] == ":":
                second, j = _parse_inner(s, j + 1)
                text += [":"] + second
            if j >= len(s) or s[j] != ")":
                raise _NoParse
            nodes += text + [")"]
            i = j + 1
        elif s[i] == "[":
            node, i = _parse_bracket(s, i)
            nodes += node
        else:
            break
    return nodes, i


def _parse_bracket(s: str, i: int) -> tuple[list, int]:
    """`[...]` at s[i]: an edit `[from:to:when]` / `[to:when]`, an alternation `[a|b]`, or a
    plain `[x]` (kept as text). Raises _NoParse when it is none of these."""
    first, j = _parse_inner(s, i + 1)
    if j >= len(s):
        raise _NoParse
    if s[j] == "]":
        return ["["] + first + ["]"], j + 1
    if s[j] == "|":
        options = [first]
        while j < len(s) and s[j] == "|":
            option, j = _parse_inner(s, j + 1)
            options.append(option)
        if j >= len(s) or s[j] != "]":
            raise _NoParse
        return [("alt", options)], j + 1
    if s[j] != ":":
        raise _NoParse
    number = _NUMBER.match(s, j + 1)
    if number:  # [to:when]
        return [("edit", [], first, number.group(1))], number.end()
    second, k = _parse_inner(s, j + 1)
    number = _NUMBER.match(s, k + 1) if k < len(s) and s[k] == ":" else None
    if number is None:
        raise _NoParse
    return [("edit", first, second, number.group(1))], number.end()


def _parse_schedule(s: str) -> list:
    nodes: list = []
    i = 0
    while i < len(s):
        plain = _PLAIN.match(s, i)
        if plain:
            nodes.append(plain.group(0))
            i = plain.end()
        elif s[i] == "[":
            try:
                node, i = _parse_bracket(s, i)
                nodes += node
            except _NoParse:  # not a construct: a literal "[" at the top level
                nodes.append("[")
                i += 1
        elif s[i] in "]():":
            nodes.append(s[i])
            i += 1
        else:  # "|" outside an alternation, or a trailing backslash
            raise _NoParse
    return nodes


def _edit_step(when: str, steps: int) -> int:
    """A1111: a `when` with a '.' is a fraction of the steps, else a step number; at most steps."""
    value = float(when)
    if "." in when:
        value *= steps
    return int(max(-1.0, min(float(steps), value)))


def _switch_steps(nodes: list, steps: int, found: set[int]) -> None:
    for node in nodes:
        if isinstance(node, str):
            continue
        if node[0] == "edit":
            when = _edit_step(node[3], steps)
            if when >= 1:
                found.add(when)
            _switch_steps(node[1], steps, found)
            _switch_steps(node[2], steps, found)
        else:
            found.update(range(1, steps + 1))
            for option in node[1]:
                _switch_steps(option, steps, found)


def _text_at(nodes: list, step: int, steps: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif node[0] == "edit":
            chosen = node[1] if step <= _edit_step(node[3], steps) else node[2]
            out.append(_text_at(chosen, step, steps))
        else:
            options = node[1]
            out.append(_text_at(options[(step - 1) % len(options)], step, steps))
    return "".join(out)


def prompt_schedules(prompt: str, steps: int) -> list[tuple[int, str]]:
    """A1111's prompt editing and alternation: [(last step, prompt text), ...] in step order; the
    text of an entry is used for the steps after the previous entry's up to its own. `[a:b:when]`
    is `a` while step <= when, then `b`; `[a|b]` alternates every step."""
    steps = max(1, int(steps))
    try:
        nodes = _parse_schedule(prompt)
    except (_NoParse, RecursionError):
        return [(steps, prompt)]
    found = {steps}
    _switch_steps(nodes, steps, found)
    return [(step, _text_at(nodes, step, steps)) for step in sorted(found)]
