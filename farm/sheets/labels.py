"""How axis values read on a sheet: values as text, prompts cut to what differs (axis titles: farm/params.py)."""

from __future__ import annotations

import json
import os

from farm.inputs import label

PROMPT_AXES = ("prompt", "negative_prompt")  # long texts: label only the part that differs
INPUT_AXES = ("init_images",)  # input images (farm/inputs.py): a path, labelled by its file stem
LABEL_CHARS = 80  # longest label value before it is cut with "…"
SEPARATORS = " ,\n"  # where a prompt's words end


def _plain(value: object) -> object:
    """7.0 and 7 are one value (JSON round trips may turn either into the other)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def value_id(value: object) -> str:
    """A value as a comparable key (7 and 7.0 alike)."""
    return json.dumps(_plain(value), sort_keys=True, ensure_ascii=False)


def format_value(value: object) -> str:
    """A value as a label shows it: no trailing .0, sizes as WxH."""
    value = _plain(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"{format_value(value[0])}x{format_value(value[1])}"
    if isinstance(value, dict) and {"width", "height"} <= value.keys():
        return f"{format_value(value['width'])}x{format_value(value['height'])}"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):  # a prompt-matrix combination: its parts
        return ", ".join(map(str, value)) or "none"
    return str(value)


def _truncate(text: str, limit: int = LABEL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip(SEPARATORS) + "…"


def _boundary(text: str, i: int) -> bool:
    """Whether position i of text falls between words."""
    return i in (0, len(text)) or text[i - 1] in SEPARATORS or text[i] in SEPARATORS


def differing_parts(texts: list[str]) -> list[str] | None:
    """The middle of each text once the words all share at the start and end are cut off, or None
    when that leaves some text empty or two texts alike (then the whole text says more)."""
    prefix = len(os.path.commonprefix(texts))
    while not all(_boundary(t, prefix) for t in texts):
        prefix -= 1
    rests = [t[prefix:] for t in texts]
    suffix = len(os.path.commonprefix([r[::-1] for r in rests]))
    while not all(_boundary(r, len(r) - suffix) for r in rests):
        suffix -= 1
    middles = [r[: len(r) - suffix].strip(SEPARATORS) for r in rests]
    if not all(middles) or len(set(middles)) < len(middles):
        return None
    return middles


def value_texts(axis: str, values: list[object]) -> list[str]:
    """How each value of an axis reads in labels and sheet names."""
    texts = [format_value(v) for v in values]
    if axis in PROMPT_AXES and len(texts) > 1:
        texts = differing_parts(texts) or texts
    if axis in INPUT_AXES:  # an input image by its file's stem, unless two stems read alike
        stems = [label(t) for t in texts]
        texts = stems if len(set(stems)) == len(stems) else texts
    return [_truncate(t) for t in texts]
