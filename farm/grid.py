"""Labelled contact sheets (A1111's X/Y plot grids) built from a job's image records.

An axis is a key of the records' `axes` whose value differs between images. X runs along the top,
Y down the left, and every combination of the remaining varying axes (Z first) gets a sheet of its
own (A1111 draws one X/Y grid per Z value). Values keep expansion order, not alphabetical order.
A prompt-matrix job is laid out as A1111 lays it out: the first half of the `|` parts on columns,
the rest on rows, each label listing its parts with the absent ones struck through. A sheet larger
than the size cap shows thumbnails, and past the smallest thumbnail it is split into pages. Each
sheet PNG carries its axes, labels and cell geometry as JSON in a `seedfarm-grid` text chunk.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

import yaml

from farm.spec import PromptMatrix
from farm.store import Store, job_spec_key, load_records, sheet_key

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
    "matrix_x": "Prompt matrix",
    "matrix_y": "Prompt matrix",
}
MATRIX_AXES = ("matrix_x", "matrix_y")  # derived from the prompt in a prompt-matrix job
PROMPT_AXES = ("prompt", "negative_prompt")  # long texts: label only the part that differs
GRID_CHUNK = "seedfarm-grid"
LABEL_CHARS = 80  # longest label value before it is cut with "…"
MISSING_FILL = (160, 160, 160)  # a cell whose image is not (yet) there
STRUCK_FILL = (150, 150, 150)  # a prompt-matrix part absent from a row or column
MAX_SIDE = 8192  # the cell area of one sheet stays within this many pixels per side
MIN_CELL = 128  # thumbnails shrink to fit MAX_SIDE, but not below this; past it, pages
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
    page: int = 1  # pages of one X/Y grid too big for one sheet: 1..pages, row by row
    pages: int = 1

    def meta(self) -> dict:
        return {
            "name": self.name, "x": self.x, "y": self.y,
            "x_labels": self.x_labels, "y_labels": self.y_labels, "fixed": self.fixed,
            "x_values": self.x_values, "y_values": self.y_values,
            "origin": list(self.origin), "cell_size": list(self.cell_size), "cells": self.cells,
            "page": self.page, "pages": self.pages,
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


# ---- the prompt matrix ------------------------------------------------------------------------


def matrix_prompt(spec_text: str) -> str | None:
    """The `base|a|b` prompt of a job spec with `prompt_matrix: true` and one prompt, else None."""
    try:
        data = yaml.safe_load(spec_text)
    except yaml.YAMLError:
        return None
    if not isinstance(data, dict) or data.get("prompt_matrix") is not True:
        return None
    prompt = data.get("prompt", data.get("prompts"))
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) and "|" in prompt else None


def matrix_records(records: list[dict], prompt: str) -> list[dict] | None:
    """Records with the prompt axis replaced by A1111's matrix axes: matrix_x holds the active
    parts of the first half (columns), matrix_y those of the second (rows). None when a record's
    prompt is not one of the matrix's prompts."""
    matrix = PromptMatrix(prompt)
    combination = {matrix[i]: i for i in range(len(matrix))}
    half = (len(matrix.parts) + 1) // 2  # A1111: ceil(n / 2) parts across
    out = []
    for record in records:
        i = combination.get(record["axes"].get("prompt"))
        if i is None:
            return None
        active = [p for n, p in enumerate(matrix.parts) if i >> n & 1]
        axes = {k: v for k, v in record["axes"].items() if k != "prompt"}
        axes["matrix_x"] = [p for p in matrix.parts[:half] if p in active]
        axes["matrix_y"] = [p for p in matrix.parts[half:] if p in active]
        out.append({**record, "axes": axes})
    return out


def _matrix_label(parts: list[str], active: list[str]) -> list[tuple[str, bool]]:
    """A1111's matrix label: every part of the half, the absent ones struck through."""
    return [(part, part in active) for part in parts]


# ---- drawing --------------------------------------------------------------------------------

Label = str | list[tuple[str, bool]]  # plain text, or matrix parts with present/absent


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


def _label_lines(label: Label, font, width: float) -> list[tuple[str, bool]]:
    """(line, present) pairs: a plain label is all present."""
    if isinstance(label, str):
        return [(line, True) for line in _wrap(label, font, width)]
    return [(line, on) for part, on in label for line in _wrap(part, font, width)]


def _draw_lines(draw: ImageDraw.ImageDraw, lines: list[tuple[str, bool]], font, box, line_h: int) -> None:
    """Lines centred in box (left, top, right, bottom); absent matrix parts gray and struck."""
    left, top, right, bottom = box
    y = top + (bottom - top - len(lines) * line_h) / 2
    for line, present in lines:
        x = left + (right - left - font.getlength(line)) / 2
        draw.text((x, y), line, font=font, fill="black" if present else STRUCK_FILL)
        if not present:
            middle = y + line_h / 2
            draw.line((x, middle, x + font.getlength(line), middle), fill=STRUCK_FILL, width=1)
        y += line_h


def _fit_lines(lines: list[tuple[str, bool]], max_lines: int) -> list[tuple[str, bool]]:
    if len(lines) <= max_lines:
        return lines
    last, present = lines[max_lines - 1]
    return lines[: max_lines - 1] + [(last.rstrip(_SEPARATORS) + "…", present)]


def _load(load_image: Callable[[dict], Image.Image], record: dict, cell: tuple[int, int]) -> Image.Image | None:
    try:
        image = load_image(record)
    except FileNotFoundError:
        return None  # record without its image: the cell stays blank
    if image is None:
        return None
    try:
        image = image.convert("RGB")
    finally:
        if getattr(image, "fp", None) is not None:
            image.close()  # opened from a file: let the file go now, not at garbage collection
    if image.width > cell[0] or image.height > cell[1]:
        image.thumbnail(cell, Image.Resampling.LANCZOS)  # a thumbnail: the sheet is over its size cap
    return image


def _draw_sheet(
    x_labels: list[Label], y_labels: list[Label], title: str, cells: list[list[dict | None]],
    load_image: Callable[[dict], Image.Image], cell_size: tuple[int, int],
) -> tuple[Image.Image, tuple[int, int], list[list[bool]]]:
    """The sheet image, its first cell's corner, and which cells show an image."""
    cell_w, cell_h = cell_size
    images = [[_load(load_image, r, cell_size) if r else None for r in row] for row in cells]

    # A1111 scales its label font with the cell; a floor keeps tiny test images readable.
    font_size = max(12, (cell_w + cell_h) // 25)
    font = ImageFont.load_default(size=font_size)
    ascent, descent = font.getmetrics()
    line_h = ascent + descent
    pad = font_size // 2

    col_lines = [_label_lines(label, font, max(cell_w - 2 * pad, 3 * font_size)) for label in x_labels]
    top_h = max((len(lines) for lines in col_lines), default=0) * line_h + 2 * pad if x_labels else 0
    row_limit = max(cell_w * 3 // 4, 8 * font_size)
    max_row_lines = max(1, cell_h // line_h)
    row_lines = [_fit_lines(_label_lines(label, font, row_limit), max_row_lines) for label in y_labels]
    left_w = 0
    if y_labels:
        left_w = int(max(font.getlength(line) for lines in row_lines for line, _ in lines)) + 2 * pad

    grid_w = left_w + len(images[0]) * cell_w
    title_lines = _label_lines(title, font, max(grid_w - 2 * pad, 3 * font_size)) if title else []
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
    return sheet, origin, [[im is not None for im in row] for row in images]


def _cell_size(records: list[dict], cols: int, rows: int, max_side: int, min_cell: int) -> tuple[int, int]:
    """The images' own size, or smaller so cols x rows cells fit max_side, down to min_cell."""
    w = max(r["task"]["width"] for r in records)
    h = max(r["task"]["height"] for r in records)
    scale = min(1.0, max_side / (cols * w), max_side / (rows * h))
    scale = max(scale, min(1.0, min_cell / max(w, h)))
    return max(1, round(w * scale)), max(1, round(h * scale))


# ---- sheets ---------------------------------------------------------------------------------


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", text).strip("_.")[:40] or "_"


def iter_sheets(
    records: list[dict], load_image: Callable[[dict], Image.Image], x: str | None = None, y: str | None = None,
    z: str | None = None, filters: dict[str, str] | None = None, matrix: str | None = None,
    max_side: int = MAX_SIDE, min_cell: int = MIN_CELL,
) -> Iterator[Sheet]:
    """Like build_sheets, one sheet at a time (a job's sheets need not all fit in memory)."""
    records = _sorted(records)
    if not records:
        return
    filters = dict(filters or {})
    records = filter_records(records, filters)
    if matrix and "prompt" in axis_values(records) and (x == "prompt" or y == "prompt" or not (x or y)):
        derived = matrix_records(records, matrix)
        if derived is not None:
            asked = y if x == "prompt" else x  # the other requested axis moves to Z
            z = z or (asked if asked in axis_values(derived) else None)
            records, x, y = derived, "matrix_x", "matrix_y"
            if "matrix_y" not in axis_values(records):
                y = None
    if z is not None and z in (x, y):
        raise ValueError(f"'{z}' is already on {'x' if z == x else 'y'}: choose another axis for z")
    x, y = choose_axes(records, x, y)
    varying = axis_values(records)
    if z is not None and z not in varying:
        raise ValueError(f"cannot put '{z}' on z: it does not vary here; axes that vary: {', '.join(varying)}")
    texts = {axis: dict(zip(map(value_id, values), value_texts(axis, values))) for axis, values in varying.items()}
    others = ([z] if z else []) + [a for a in varying if a not in (x, y, z)]
    x_values = varying[x] if x else [None]
    y_values = varying[y] if y else [None]
    x_ids, y_ids = [value_id(v) for v in x_values], [value_id(v) for v in y_values]
    x_labels = [f"{axis_title(x)}: {texts[x][i]}" for i in x_ids] if x else []
    y_labels = [f"{axis_title(y)}: {texts[y][i]}" for i in y_ids] if y else []
    if matrix and x in MATRIX_AXES:  # A1111 draws each matrix label as its parts, absent ones struck
        matrix_parts = PromptMatrix(matrix).parts
        half = (len(matrix_parts) + 1) // 2
        x_drawn = [_matrix_label(matrix_parts[:half], v) for v in x_values]
        y_drawn = [_matrix_label(matrix_parts[half:], v) for v in y_values] if y else []
    else:
        x_drawn, y_drawn = x_labels, y_labels
    filter_title = [f"{axis_title(a)}: {t}" for a, t in filters.items()]

    # One group per combination of the other varying axes, in the order first met.
    groups: dict[tuple[str, ...], list[dict]] = {}
    for record in records:
        groups.setdefault(tuple(value_id(record["axes"].get(a)) for a in others), []).append(record)
    if z:  # Z is the outermost loop of the sheets, whatever the expansion order
        z_order = [value_id(v) for v in varying[z]]
        groups = dict(sorted(groups.items(), key=lambda item: z_order.index(item[0][0])))

    cell_size = _cell_size(records, len(x_ids), len(y_ids), max_side, min_cell)
    per_row, per_col = max(1, max_side // cell_size[0]), max(1, max_side // cell_size[1])
    col_pages = [range(c, min(c + per_row, len(x_ids))) for c in range(0, len(x_ids), per_row)]
    row_pages = [range(r, min(r + per_col, len(y_ids))) for r in range(0, len(y_ids), per_col)]
    pages = len(col_pages) * len(row_pages)

    used_names: set[str] = set()
    for key, group in groups.items():
        cells: list[list[dict | None]] = [[None] * len(x_ids) for _ in y_ids]
        for record in group:
            c = x_ids.index(value_id(record["axes"].get(x))) if x else 0
            r = y_ids.index(value_id(record["axes"].get(y))) if y else 0
            if cells[r][c] is None:  # the first in expansion order wins a shared cell
                cells[r][c] = record
        fixed = {**filters, **{a: group[0]["axes"].get(a) for a in others}}
        name = "sheet" + "".join(f"-{a}={_safe(t)}" for a, t in filters.items())
        name += "".join(f"-{a}={_safe(texts[a][i])}" for a, i in zip(others, key))
        name = name[:150]
        base, n = name, 2
        while name in used_names:  # two values may read alike once made file-safe
            name, n = f"{base}-{n}", n + 1
        used_names.add(name)
        title = ", ".join(filter_title + [f"{axis_title(a)}: {texts[a][i]}" for a, i in zip(others, key)])
        page = 0
        for rows in row_pages:
            for cols in col_pages:
                page += 1
                part = [[cells[r][c] for c in cols] for r in rows]
                page_title = f"{title} (page {page} of {pages})".lstrip(", ") if pages > 1 else title
                image, origin, shown = _draw_sheet(
                    [x_drawn[c] for c in cols] if x else [], [y_drawn[r] for r in rows] if y else [],
                    page_title, part, load_image, cell_size,
                )
                yield Sheet(
                    name=f"{name}-page{page}" if pages > 1 else name, image=image, x=x, y=y,
                    x_labels=[x_labels[c] for c in cols] if x else [],
                    y_labels=[y_labels[r] for r in rows] if y else [], fixed=fixed,
                    x_values=[x_values[c] for c in cols] if x else [],
                    y_values=[y_values[r] for r in rows] if y else [],
                    origin=origin, cell_size=cell_size,
                    cells=[[rec["image"] if ok else None for rec, ok in zip(row, oks)] for row, oks in zip(part, shown)],
                    page=page, pages=pages,
                )


def build_sheets(
    records: list[dict], load_image: Callable[[dict], Image.Image], x: str | None = None, y: str | None = None,
    **options,
) -> list[Sheet]:
    """One labelled X/Y sheet per combination of the other varying axes (options: z, filters,
    matrix, max_side, min_cell as in iter_sheets). `load_image(record)` gives a record's image
    (FileNotFoundError or None: the cell stays blank gray)."""
    return list(iter_sheets(records, load_image, x, y, **options))


def star_sheet(records: list[dict], load_image: Callable[[dict], Image.Image], title: str = "") -> Sheet:
    """One sheet of chosen images (the stars of a review), in rows of about sqrt(n), each labelled
    with its values of the axes that vary among them."""
    records = _sorted(records)
    varying = axis_values(records)
    texts = {a: dict(zip(map(value_id, vs), value_texts(a, vs))) for a, vs in varying.items()}
    labels = [
        "\n".join(f"{axis_title(a)}: {texts[a][value_id(r['axes'].get(a))]}" for a in varying) for r in records
    ]
    cols = max(1, round(len(records) ** 0.5 + 0.49))
    rows = -(-len(records) // cols)
    cell = _cell_size(records, cols, rows, MAX_SIDE, MIN_CELL)
    font = ImageFont.load_default(size=max(12, (cell[0] + cell[1]) // 25))
    ascent, descent = font.getmetrics()
    line_h, pad = ascent + descent, font.size // 2
    wrapped = [_label_lines(label, font, cell[0] - 2 * pad) if label else [] for label in labels]
    caption_h = max((len(lines) for lines in wrapped), default=0) * line_h + (2 * pad if varying else 0)
    title_lines = _label_lines(title, font, cols * cell[0] - 2 * pad) if title else []
    title_h = len(title_lines) * line_h + 2 * pad if title else 0
    sheet = Image.new("RGB", (cols * cell[0], title_h + rows * (cell[1] + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    if title_lines:
        _draw_lines(draw, title_lines, font, (0, 0, sheet.width, title_h), line_h)
    cells: list[list[str | None]] = [[None] * cols for _ in range(rows)]
    for n, (record, lines) in enumerate(zip(records, wrapped)):
        r, c = divmod(n, cols)
        left, top = c * cell[0], title_h + r * (cell[1] + caption_h)
        image = _load(load_image, record, cell)
        if image is None:
            draw.rectangle((left, top, left + cell[0] - 1, top + cell[1] - 1), fill=MISSING_FILL)
        else:
            sheet.paste(image, (left + (cell[0] - image.width) // 2, top + (cell[1] - image.height) // 2))
            cells[r][c] = record["image"]
        _draw_lines(draw, lines, font, (left, top + cell[1], left + cell[0], top + cell[1] + caption_h), line_h)
    return Sheet(
        name="stars", image=sheet, x=None, y=None, x_labels=[], y_labels=labels, fixed={},
        origin=(0, title_h), cell_size=cell, cells=cells,
    )


def store_image_loader(store: Store, job: str) -> Callable[[dict], Image.Image]:
    def load_image(record: dict) -> Image.Image:
        return Image.open(io.BytesIO(store.read_bytes(f"{job}/{record['image']}")))

    return load_image


def job_matrix_prompt(store: Store, job: str) -> str | None:
    """The job's prompt-matrix prompt, from the spec copy in the store (None if not a matrix)."""
    try:
        return matrix_prompt(store.read_text(job_spec_key(job)))
    except FileNotFoundError:
        return None


def write_sheets(
    store: Store, job: str, x: str | None = None, y: str | None = None, **options
) -> list[str]:
    """Build the job's sheets from its records and images and write them to {job}/sheets/. Sheets
    left from an earlier choice of axes are removed: the folder always shows one consistent set.
    Options as in iter_sheets (z, filters, max_side, min_cell)."""
    records = load_records(store, job)
    if not records:
        raise ValueError(f"no finished images in {store.describe(job)}: nothing to put on a sheet")
    options.setdefault("matrix", job_matrix_prompt(store, job))
    written = []
    for sheet in iter_sheets(records, store_image_loader(store, job), x, y, **options):
        key = sheet_key(job, sheet.name)
        store.write_bytes(key, sheet.png())
        written.append(key)
    for key in store.list_keys(f"{job}/sheets/"):
        if key.endswith(".png") and key not in written:
            store.delete(key)
    return written
