"""Labelled contact sheets (A1111's X/Y plot grids) built from a job's image records.

An axis is a key of the records' `axes` whose value differs between images. X runs along the top,
Y down the left, and every combination of the remaining varying axes gets a sheet of its own (A1111
draws one X/Y grid per Z value). Values keep expansion order, not alphabetical order. Each sheet PNG
carries its axes, labels and cell geometry as JSON in a `seedfarm-grid` text chunk, for tools.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from farm.store import Store, load_records, sheet_key

AXIS_TITLES = {
    "seed": "Seed",
    "cfg": "CFG scale",
    "steps": "Steps",
    "sampler": "Sampler",
    "schedule": "Schedule type",
    "checkpoint": "Checkpoint",
    "size": "Size",
    "clip_skip": "Clip skip",
    "prompt": "Prompt",
    "negative_prompt": "Negative prompt",
    "prompt_sr": "Prompt S/R",
}
PROMPT_AXES = ("prompt", "negative_prompt")  # long texts: label only the part that differs
GRID_CHUNK = "seedfarm-grid"
LABEL_CHARS = 80  # longest label value before it is cut with "…"
MISSING_FILL = (160, 160, 160)  # a cell whose image is not (yet) there
_SEPARATORS = " ,\n"


@dataclass
class Sheet:
    name: str
    image: Image.Image
    x: str | None
    y: str | None
    x_labels: list[str]
    y_labels: list[str]
    fixed: dict[str, object]
    x_values: list[object] = field(default_factory=list)
    y_values: list[object] = field(default_factory=list)
    origin: tuple[int, int] = (0, 0)  # top-left corner of the first cell
    cell_size: tuple[int, int] = (0, 0)
    # [row][col] -> the image shown there (key relative to the job folder), or None for a gray cell
    cells: list[list[str | None]] = field(default_factory=list)

    def meta(self) -> dict:
        return {
            "name": self.name, "x": self.x, "y": self.y,
            "x_labels": self.x_labels, "y_labels": self.y_labels, "fixed": self.fixed,
            "x_values": self.x_values, "y_values": self.y_values,
            "origin": list(self.origin), "cell_size": list(self.cell_size), "cells": self.cells,
        }

    def png(self) -> bytes:
        info = PngImagePlugin.PngInfo()
        info.add_text(GRID_CHUNK, json.dumps(self.meta(), ensure_ascii=False))
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG", pnginfo=info)
        return buffer.getvalue()


def read_grid_info(data: bytes | str | os.PathLike) -> dict | None:
    """The `seedfarm-grid` JSON of a sheet PNG (bytes or a path), or None."""
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    with Image.open(source) as image:
        text = image.info.get(GRID_CHUNK)
    return json.loads(text) if text is not None else None


# ---- values and labels ----------------------------------------------------------------------


def _plain(value: object) -> object:
    """7.0 and 7 are one value (JSON round trips may turn either into the other)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _identity(value: object) -> str:
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
    return str(value)


def axis_title(axis: str) -> str:
    return AXIS_TITLES.get(axis) or axis.replace("_", " ").capitalize()


def _truncate(text: str, limit: int = LABEL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip(_SEPARATORS) + "…"


def _boundary(text: str, i: int) -> bool:
    """Whether position i of text falls between words."""
    return i in (0, len(text)) or text[i - 1] in _SEPARATORS or text[i] in _SEPARATORS


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
    middles = [r[: len(r) - suffix].strip(_SEPARATORS) for r in rests]
    if not all(middles) or len(set(middles)) < len(middles):
        return None
    return middles


def value_texts(axis: str, values: list[object]) -> list[str]:
    """How each value of an axis reads in labels and sheet names."""
    texts = [format_value(v) for v in values]
    if axis in PROMPT_AXES and len(texts) > 1:
        texts = differing_parts(texts) or texts
    return [_truncate(t) for t in texts]


# ---- axes -----------------------------------------------------------------------------------


def _sorted(records: list[dict]) -> list[dict]:
    return sorted(records, key=lambda r: (r["index"], r["seed"]))


def axis_values(records: list[dict]) -> dict[str, list[object]]:
    """Varying axis -> its distinct values, both in the order first seen in expansion order."""
    records = _sorted(records)
    names: list[str] = []
    for record in records:
        names += [k for k in record["axes"] if k not in names]
    varying: dict[str, list[object]] = {}
    for name in names:
        seen: dict[str, object] = {}
        for record in records:
            value = record["axes"].get(name)
            seen.setdefault(_identity(value), value)
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


# ---- drawing --------------------------------------------------------------------------------


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """Word-wrap to a pixel width; a word wider than the width is cut by characters."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while len(word) > 1 and font.getlength(word) > width:
                cut = len(word) - 1
                while cut > 1 and font.getlength(word[:cut]) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _draw_lines(draw: ImageDraw.ImageDraw, lines: list[str], font, box: tuple[int, int, int, int], line_h: int) -> None:
    """Lines centred in box (left, top, right, bottom)."""
    left, top, right, bottom = box
    y = top + (bottom - top - len(lines) * line_h) / 2
    for line in lines:
        draw.text((left + (right - left - font.getlength(line)) / 2, y), line, font=font, fill="black")
        y += line_h


def _fit_lines(lines: list[str], max_lines: int) -> list[str]:
    if len(lines) <= max_lines:
        return lines
    return lines[: max_lines - 1] + [lines[max_lines - 1].rstrip(_SEPARATORS) + "…"]


def _load(load_image: Callable[[dict], Image.Image], record: dict) -> Image.Image | None:
    try:
        image = load_image(record)
    except FileNotFoundError:
        return None  # record without its image: the cell stays blank
    if image is None:
        return None
    try:
        return image.convert("RGB")
    finally:
        if getattr(image, "fp", None) is not None:
            image.close()  # opened from a file: let the file go now, not at garbage collection


def _draw_sheet(
    x_labels: list[str], y_labels: list[str], title: str, cells: list[list[dict | None]],
    load_image: Callable[[dict], Image.Image],
) -> tuple[Image.Image, tuple[int, int], tuple[int, int], list[list[bool]]]:
    """The sheet image, its first cell's corner, the cell size, and which cells show an image."""
    images = [[_load(load_image, r) if r else None for r in row] for row in cells]
    sizes = [im.size for row in images for im in row if im is not None]
    sizes += [(r["task"]["width"], r["task"]["height"]) for row in cells for r in row if r and "task" in r]
    cell_w = max([w for w, _ in sizes], default=64)
    cell_h = max([h for _, h in sizes], default=64)

    # A1111 scales its label font with the cell; a floor keeps tiny test images readable.
    font_size = max(12, (cell_w + cell_h) // 25)
    font = ImageFont.load_default(size=font_size)
    ascent, descent = font.getmetrics()
    line_h = ascent + descent
    pad = font_size // 2

    col_lines = [_wrap(label, font, max(cell_w - 2 * pad, 3 * font_size)) for label in x_labels]
    top_h = max((len(lines) for lines in col_lines), default=0) * line_h + 2 * pad if x_labels else 0
    row_limit = max(cell_w * 3 // 4, 8 * font_size)
    max_row_lines = max(1, cell_h // line_h)
    row_lines = [_fit_lines(_wrap(label, font, row_limit), max_row_lines) for label in y_labels]
    left_w = 0
    if y_labels:
        left_w = int(max(font.getlength(line) for lines in row_lines for line in lines)) + 2 * pad

    grid_w = left_w + len(images[0]) * cell_w
    title_lines = _wrap(title, font, max(grid_w - 2 * pad, 3 * font_size)) if title else []
    title_h = len(title_lines) * line_h + 2 * pad if title_lines else 0
    origin = (left_w, title_h + top_h)

    sheet = Image.new("RGB", (grid_w, origin[1] + len(images) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    if title_lines:
        _draw_lines(draw, title_lines, font, (0, 0, grid_w, title_h), line_h)
    for c, lines in enumerate(col_lines):
        left = origin[0] + c * cell_w
        _draw_lines(draw, lines, font, (left, title_h, left + cell_w, origin[1]), line_h)
    for r, lines in enumerate(row_lines):
        top = origin[1] + r * cell_h
        _draw_lines(draw, lines, font, (0, top, left_w, top + cell_h), line_h)
    for r, row in enumerate(images):
        for c, image in enumerate(row):
            left, top = origin[0] + c * cell_w, origin[1] + r * cell_h
            if image is None:
                draw.rectangle((left, top, left + cell_w - 1, top + cell_h - 1), fill=MISSING_FILL)
            else:  # smaller images (a size axis) sit centred in their cell
                sheet.paste(image, (left + (cell_w - image.width) // 2, top + (cell_h - image.height) // 2))
    return sheet, origin, (cell_w, cell_h), [[im is not None for im in row] for row in images]


# ---- sheets ---------------------------------------------------------------------------------


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", text).strip("_.")[:40] or "_"


def iter_sheets(
    records: list[dict], load_image: Callable[[dict], Image.Image], x: str | None = None, y: str | None = None
) -> Iterator[Sheet]:
    """Like build_sheets, one sheet at a time (a job's sheets need not all fit in memory)."""
    records = _sorted(records)
    if not records:
        return
    x, y = choose_axes(records, x, y)
    varying = axis_values(records)
    texts = {axis: dict(zip(map(_identity, values), value_texts(axis, values))) for axis, values in varying.items()}
    others = [a for a in varying if a not in (x, y)]
    x_values = varying[x] if x else [None]
    y_values = varying[y] if y else [None]
    x_ids, y_ids = [_identity(v) for v in x_values], [_identity(v) for v in y_values]
    x_labels = [f"{axis_title(x)}: {texts[x][i]}" for i in x_ids] if x else []
    y_labels = [f"{axis_title(y)}: {texts[y][i]}" for i in y_ids] if y else []

    # One group per combination of the other varying axes, in the order first met.
    groups: dict[tuple[str, ...], list[dict]] = {}
    for record in records:
        groups.setdefault(tuple(_identity(record["axes"].get(a)) for a in others), []).append(record)

    used_names: set[str] = set()
    for key, group in groups.items():
        cells: list[list[dict | None]] = [[None] * len(x_ids) for _ in y_ids]
        for record in group:
            c = x_ids.index(_identity(record["axes"].get(x))) if x else 0
            r = y_ids.index(_identity(record["axes"].get(y))) if y else 0
            if cells[r][c] is None:  # the first in expansion order wins a shared cell
                cells[r][c] = record
        fixed = {a: group[0]["axes"].get(a) for a in others}
        name = "sheet" + "".join(f"-{a}={_safe(texts[a][i])}" for a, i in zip(others, key))
        name = name[:150]
        base, n = name, 2
        while name in used_names:  # two values may read alike once made file-safe
            name, n = f"{base}-{n}", n + 1
        used_names.add(name)
        title = ", ".join(f"{axis_title(a)}: {texts[a][i]}" for a, i in zip(others, key))
        image, origin, cell_size, shown = _draw_sheet(x_labels, y_labels, title, cells, load_image)
        yield Sheet(
            name=name, image=image, x=x, y=y, x_labels=x_labels, y_labels=y_labels, fixed=fixed,
            x_values=list(x_values) if x else [], y_values=list(y_values) if y else [],
            origin=origin, cell_size=cell_size,
            cells=[[r["image"] if ok else None for r, ok in zip(row, oks)] for row, oks in zip(cells, shown)],
        )


def build_sheets(
    records: list[dict], load_image: Callable[[dict], Image.Image], x: str | None = None, y: str | None = None
) -> list[Sheet]:
    """One labelled X/Y sheet per combination of the other varying axes. `load_image(record)`
    gives a record's image (FileNotFoundError or None: the cell stays blank gray)."""
    return list(iter_sheets(records, load_image, x, y))


def write_sheets(store: Store, job: str, x: str | None = None, y: str | None = None) -> list[str]:
    """Build the job's sheets from its records and images and write them to {job}/sheets/. Sheets
    left from an earlier choice of axes are removed: the folder always shows one consistent set."""
    records = load_records(store, job)
    if not records:
        raise ValueError(f"no finished images in {store.describe(job)}: nothing to put on a sheet")

    def load_image(record: dict) -> Image.Image:
        return Image.open(io.BytesIO(store.read_bytes(f"{job}/{record['image']}")))

    written = []
    for sheet in iter_sheets(records, load_image, x, y):
        key = sheet_key(job, sheet.name)
        store.write_bytes(key, sheet.png())
        written.append(key)
    for key in store.list_keys(f"{job}/sheets/"):
        if key.endswith(".png") and key not in written:
            store.delete(key)
    return written
