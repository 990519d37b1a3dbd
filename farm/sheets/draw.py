"""Drawing a sheet: label text wrapped and centred, cells pasted, gray where an image is missing."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image, ImageDraw, ImageFont

from farm.sheets.labels import SEPARATORS

MISSING_FILL = (160, 160, 160)  # a cell whose image is not (yet) there
STRUCK_FILL = (150, 150, 150)  # a prompt-matrix part absent from a row or column

Label = str | list[tuple[str, bool]]  # plain text, or matrix parts with present/absent
ImageLoader = Callable[[dict], Image.Image]  # a record's image; FileNotFoundError or None: not there


def label_font(cell: tuple[int, int]) -> ImageFont.FreeTypeFont:
    # A1111 scales its label font with the cell; a floor keeps tiny test images readable.
    return ImageFont.load_default(size=max(12, (cell[0] + cell[1]) // 25))


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


def label_lines(label: Label, font, width: float) -> list[tuple[str, bool]]:
    """(line, present) pairs: a plain label is all present."""
    if isinstance(label, str):
        return [(line, True) for line in _wrap(label, font, width)]
    return [(line, on) for part, on in label for line in _wrap(part, font, width)]


def draw_lines(draw: ImageDraw.ImageDraw, lines: list[tuple[str, bool]], font, box, line_h: int) -> None:
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
    return lines[: max_lines - 1] + [(last.rstrip(SEPARATORS) + "…", present)]


def load_cell(load_image: ImageLoader, record: dict, cell: tuple[int, int]) -> Image.Image | None:
    """The record's image as RGB, shrunk to the cell if larger; None when it is not there."""
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


def paste_cell(sheet: Image.Image, draw: ImageDraw.ImageDraw, image: Image.Image | None, left: int, top: int,
               cell: tuple[int, int]) -> None:
    """The image centred in its cell (smaller images: a size axis), or a gray cell."""
    if image is None:
        draw.rectangle((left, top, left + cell[0] - 1, top + cell[1] - 1), fill=MISSING_FILL)
    else:
        sheet.paste(image, (left + (cell[0] - image.width) // 2, top + (cell[1] - image.height) // 2))


def _head(image: Image.Image | None, box: tuple[int, int]) -> Image.Image | None:
    """A header thumbnail (an init image) fitted into box, RGB."""
    if image is None:
        return None
    image = image.convert("RGB")
    image.thumbnail(box, Image.Resampling.LANCZOS)
    return image


def draw_grid(
    x_labels: list[Label], y_labels: list[Label], title: str, cells: list[list[dict | None]],
    load_image: ImageLoader, cell_size: tuple[int, int],
    x_heads: list[Image.Image | None] | None = None, y_heads: list[Image.Image | None] | None = None,
) -> tuple[Image.Image, tuple[int, int], list[list[bool]]]:
    """The X/Y sheet image, its first cell's corner, and which cells show an image. x_heads/y_heads:
    an image per column/row drawn at half a cell between its label and the cells (an init image)."""
    cell_w, cell_h = cell_size
    images = [[load_cell(load_image, r, cell_size) if r else None for r in row] for row in cells]

    font = label_font(cell_size)
    font_size = font.size
    ascent, descent = font.getmetrics()
    line_h = ascent + descent
    pad = font_size // 2

    col_lines = [label_lines(label, font, max(cell_w - 2 * pad, 3 * font_size)) for label in x_labels]
    top_h = max((len(lines) for lines in col_lines), default=0) * line_h + 2 * pad if x_labels else 0
    row_limit = max(cell_w * 3 // 4, 8 * font_size)
    max_row_lines = max(1, cell_h // line_h)
    row_lines = [_fit_lines(label_lines(label, font, row_limit), max_row_lines) for label in y_labels]
    left_w = 0
    if y_labels:
        left_w = int(max(font.getlength(line) for lines in row_lines for line, _ in lines)) + 2 * pad
    head_h = max(8, cell_h // 2) if x_heads else 0
    head_w = max(8, cell_w // 2) if y_heads else 0
    label_w, left_w = left_w, left_w + head_w

    grid_w = left_w + len(images[0]) * cell_w
    title_lines = label_lines(title, font, max(grid_w - 2 * pad, 3 * font_size)) if title else []
    title_h = len(title_lines) * line_h + 2 * pad if title_lines else 0
    origin = (left_w, title_h + top_h + head_h)

    sheet = Image.new("RGB", (grid_w, origin[1] + len(images) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    if title_lines:
        draw_lines(draw, title_lines, font, (0, 0, grid_w, title_h), line_h)
    for c, lines in enumerate(col_lines):
        left = origin[0] + c * cell_w
        draw_lines(draw, lines, font, (left, title_h, left + cell_w, origin[1] - head_h), line_h)
    for r, lines in enumerate(row_lines):
        top = origin[1] + r * cell_h
        draw_lines(draw, lines, font, (0, top, label_w, top + cell_h), line_h)
    for c, image in enumerate(x_heads or []):
        paste_cell(sheet, draw, _head(image, (cell_w, head_h)), origin[0] + c * cell_w, origin[1] - head_h,
                   (cell_w, head_h))
    for r, image in enumerate(y_heads or []):
        paste_cell(sheet, draw, _head(image, (head_w, cell_h)), label_w, origin[1] + r * cell_h, (head_w, cell_h))
    for r, row in enumerate(images):
        for c, image in enumerate(row):
            paste_cell(sheet, draw, image, origin[0] + c * cell_w, origin[1] + r * cell_h, cell_size)
    return sheet, origin, [[im is not None for im in row] for row in images]


def cell_size(records: list[dict], cols: int, rows: int, max_side: int, min_cell: int) -> tuple[int, int]:
    """The images' own size, or smaller so cols x rows cells fit max_side, down to min_cell."""
    w = max(r["task"]["width"] for r in records)
    h = max(r["task"]["height"] for r in records)
    scale = min(1.0, max_side / (cols * w), max_side / (rows * h))
    scale = max(scale, min(1.0, min_cell / max(w, h)))
    return max(1, round(w * scale)), max(1, round(h * scale))
