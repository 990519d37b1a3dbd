"""Labelled contact sheets (A1111's X/Y plot grids) built from a job's image records.

X runs along the top, Y down the left, and every combination of the remaining varying axes (Z
first) gets a sheet of its own (A1111 draws one X/Y grid per Z value). A prompt-matrix job is laid
out as A1111 lays it out (farm/sheets/matrix.py). A sheet larger than the size cap shows
thumbnails, and past the smallest thumbnail it is split into pages. Each sheet PNG carries its
axes, labels and cell geometry as JSON in a `seedfarm-grid` text chunk.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, PngImagePlugin

from farm.sheets.axes import axis_values, choose_axes, filter_records, in_expansion_order
from farm.sheets.draw import (
    ImageLoader, cell_size, draw_grid, draw_lines, label_font, label_lines, load_cell, paste_cell,
)
from farm.params import axis_title
from farm.sheets.labels import value_id, value_texts
from farm.sheets.matrix import MATRIX_AXES, matrix_halves, matrix_label, matrix_records

GRID_CHUNK = "seedfarm-grid"
MAX_SIDE = 8192  # the cell area of one sheet stays within this many pixels per side
MIN_CELL = 128  # thumbnails shrink to fit MAX_SIDE, but not below this; past it, pages


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


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", text).strip("_.")[:40] or "_"


def iter_sheets(
    records: list[dict], load_image: ImageLoader, x: str | None = None, y: str | None = None,
    z: str | None = None, filters: dict[str, str] | None = None, matrix: str | None = None,
    max_side: int = MAX_SIDE, min_cell: int = MIN_CELL, load_input: InputLoader | None = None,
) -> Iterator[Sheet]:
    """Like build_sheets, one sheet at a time (a job's sheets need not all fit in memory)."""
    records = in_expansion_order(records)
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
        across, down = matrix_halves(matrix)
        x_drawn = [matrix_label(across, v) for v in x_values]
        y_drawn = [matrix_label(down, v) for v in y_values] if y else []
    else:
        x_drawn, y_drawn = x_labels, y_labels
    filter_title = [f"{axis_title(a)}: {t}" for a, t in filters.items()]
    # an init-image axis on x or y shows each init image as a header (load_input: name -> image)
    x_heads = _input_heads(records, x, x_ids, load_input)
    y_heads = _input_heads(records, y, y_ids, load_input)

    # One group per combination of the other varying axes, in the order first met.
    groups: dict[tuple[str, ...], list[dict]] = {}
    for record in records:
        groups.setdefault(tuple(value_id(record["axes"].get(a)) for a in others), []).append(record)
    if z:  # Z is the outermost loop of the sheets, whatever the expansion order
        z_order = [value_id(v) for v in varying[z]]
        groups = dict(sorted(groups.items(), key=lambda item: z_order.index(item[0][0])))

    cell = cell_size(records, len(x_ids), len(y_ids), max_side, min_cell)
    per_row, per_col = max(1, max_side // cell[0]), max(1, max_side // cell[1])
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
                image, origin, shown = draw_grid(
                    [x_drawn[c] for c in cols] if x else [], [y_drawn[r] for r in rows] if y else [],
                    page_title, part, load_image, cell,
                    [x_heads[c] for c in cols] if x_heads else None, [y_heads[r] for r in rows] if y_heads else None,
                )
                yield Sheet(
                    name=f"{name}-page{page}" if pages > 1 else name, image=image, x=x, y=y,
                    x_labels=[x_labels[c] for c in cols] if x else [],
                    y_labels=[y_labels[r] for r in rows] if y else [], fixed=fixed,
                    x_values=[x_values[c] for c in cols] if x else [],
                    y_values=[y_values[r] for r in rows] if y else [],
                    origin=origin, cell_size=cell,
                    cells=[[rec["image"] if ok else None for rec, ok in zip(row, oks)] for row, oks in zip(part, shown)],
                    page=page, pages=pages,
                )


InputLoader = Callable[[str], "Image.Image | None"]  # an input's content name -> its image, None: not there
INPUT_FIELDS = {"init_images": "init_image"}  # input axis -> the task field naming its image


def _input_heads(records: list[dict], axis: str | None, ids: list[str], load_input: InputLoader | None
                 ) -> list[Image.Image | None] | None:
    """The input image of each value of an input axis, or None when the axis is not one."""
    if axis not in INPUT_FIELDS or load_input is None:
        return None
    names = {}
    for record in records:
        names.setdefault(value_id(record["axes"].get(axis)), record["task"].get(INPUT_FIELDS[axis]))
    return [load_input(names[i]) if names.get(i) else None for i in ids]


def build_sheets(
    records: list[dict], load_image: ImageLoader, x: str | None = None, y: str | None = None, **options,
) -> list[Sheet]:
    """One labelled X/Y sheet per combination of the other varying axes (options: z, filters,
    matrix, max_side, min_cell as in iter_sheets). `load_image(record)` gives a record's image
    (FileNotFoundError or None: the cell stays blank gray)."""
    return list(iter_sheets(records, load_image, x, y, **options))


def star_sheet(records: list[dict], load_image: ImageLoader, title: str = "") -> Sheet:
    """One sheet of chosen images (the stars of a review), in rows of about sqrt(n), each labelled
    with its values of the axes that vary among them."""
    records = in_expansion_order(records)
    varying = axis_values(records)
    texts = {a: dict(zip(map(value_id, vs), value_texts(a, vs))) for a, vs in varying.items()}
    labels = [
        "\n".join(f"{axis_title(a)}: {texts[a][value_id(r['axes'].get(a))]}" for a in varying) for r in records
    ]
    cols = max(1, round(len(records) ** 0.5 + 0.49))
    rows = -(-len(records) // cols)
    cell = cell_size(records, cols, rows, MAX_SIDE, MIN_CELL)
    font = label_font(cell)
    ascent, descent = font.getmetrics()
    line_h, pad = ascent + descent, font.size // 2
    wrapped = [label_lines(label, font, cell[0] - 2 * pad) if label else [] for label in labels]
    caption_h = max((len(lines) for lines in wrapped), default=0) * line_h + (2 * pad if varying else 0)
    title_lines = label_lines(title, font, cols * cell[0] - 2 * pad) if title else []
    title_h = len(title_lines) * line_h + 2 * pad if title else 0
    sheet = Image.new("RGB", (cols * cell[0], title_h + rows * (cell[1] + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    if title_lines:
        draw_lines(draw, title_lines, font, (0, 0, sheet.width, title_h), line_h)
    cells: list[list[str | None]] = [[None] * cols for _ in range(rows)]
    for n, (record, lines) in enumerate(zip(records, wrapped)):
        r, c = divmod(n, cols)
        left, top = c * cell[0], title_h + r * (cell[1] + caption_h)
        image = load_cell(load_image, record, cell)
        paste_cell(sheet, draw, image, left, top, cell)
        if image is not None:
            cells[r][c] = record["image"]
        draw_lines(draw, lines, font, (left, top + cell[1], left + cell[0], top + cell[1] + caption_h), line_h)
    return Sheet(
        name="stars", image=sheet, x=None, y=None, x_labels=[], y_labels=labels, fixed={},
        origin=(0, title_h), cell_size=cell, cells=cells,
    )
