"""Inpaint and outpaint (A1111 1.10's img2img inpaint settings and its "Poor man's outpainting"),
torch-free: the settings' names and defaults, how a spec writes them, and the outpaint canvas.
The spec parser reads with it, the worker (worker/masks.py, worker/kinds/inpaint.py) renders with
it, so both agree on every name and size.
"""

from __future__ import annotations

import math
import re

# inpainting_fill: A1111's "Masked content" (its API takes the index in this order)
FILLS = ("fill", "original", "latent noise", "latent nothing")
ORIGINAL = "original"
DEFAULT_FILL = ORIGINAL  # A1111's img2img default
OUTPAINT_FILL = "fill"  # the outpainting script's default
DEFAULT_MASK_BLUR = 4  # A1111's default (its slider: 0-64)
MAX_MASK_BLUR = 64
DEFAULT_PADDING = 32  # "Only masked padding, pixels" (its slider: 0-256)
MAX_PADDING = 256
# A1111's names of the two yes/no settings, also accepted in a spec
INPAINT_AREAS = ("Whole picture", "Only masked")  # inpaint_full_res: no, yes
MASK_MODES = ("Inpaint masked", "Inpaint not masked")  # mask_invert: no, yes

OUTPAINT_SIDES = ("left", "right", "up", "down")
OUTPAINT_MULTIPLE = 64  # the script grows the canvas to a multiple of 64 on each axis
MAX_OUTPAINT = 2048
_OUTPAINT_TEXT = re.compile(r"(left|right|up|down)\s*[ =:]\s*(\d+)")


def fill_name(text: str) -> str:
    """The canonical inpainting_fill ('Latent Noise' -> 'latent noise'); ValueError naming the valid ones."""
    name = " ".join(str(text).split()).lower()
    if name not in FILLS:
        raise ValueError(f"unknown inpainting_fill '{text}'; valid: {', '.join(FILLS)}")
    return name


def flag(value, names: tuple[str, str]) -> bool:
    """A yes/no setting given as true/false or as A1111's name for it (names: (no, yes))."""
    if isinstance(value, bool):
        return value
    lookup = {n.lower(): i == 1 for i, n in enumerate(names)}
    text = " ".join(str(value).split()).lower()
    if text not in lookup:
        raise ValueError(f"expected true, false, '{names[0]}' or '{names[1]}', got '{value}'")
    return lookup[text]


def outpaint_sides(value) -> tuple[int, int, int, int]:
    """(left, right, up, down) pixels of an outpaint given as a mapping {left: 32, down: 32} or as
    the text 'left 32, down 32' (how grids and the star export write it)."""
    if isinstance(value, dict):
        unknown = [k for k in value if k not in OUTPAINT_SIDES]
        if unknown:
            raise ValueError(f"unknown side '{unknown[0]}'; the sides are {', '.join(OUTPAINT_SIDES)}")
        sides = {k: value[k] for k in OUTPAINT_SIDES if k in value}
    else:
        text = str(value)
        sides = {m[1]: int(m[2]) for m in _OUTPAINT_TEXT.finditer(text)}
        if not sides or _OUTPAINT_TEXT.sub("", text).strip(" ,") != "":
            raise ValueError(f"expected sides like {{left: 32, down: 32}} or 'left 32, down 32', got '{value}'")
    for side, pixels in sides.items():
        if isinstance(pixels, bool) or not isinstance(pixels, int) or not 0 <= pixels <= MAX_OUTPAINT:
            raise ValueError(f"{side}: expected 0 to {MAX_OUTPAINT} pixels, got {pixels!r}")
    out = tuple(int(sides.get(side, 0)) for side in OUTPAINT_SIDES)
    if not any(out):
        raise ValueError("every side is 0: give the pixels to add on at least one side")
    return out  # type: ignore[return-value]


def outpaint_text(sides) -> str:
    """(left, right, up, down) -> 'left 32, down 32' (the sides that grow)."""
    return ", ".join(f"{side} {pixels}" for side, pixels in zip(OUTPAINT_SIDES, sides) if pixels)


def outpaint_geometry(width: int, height: int, left: int, right: int, up: int, down: int
                      ) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """((canvas W, H), (left, right, up, down)) of an image of width x height padded on those
    sides: each axis grows to a multiple of 64, the growth shared out in proportion to the sides
    asked for (A1111's script: 32 left of a 64-wide image gives 64 left, a 128-wide canvas)."""
    def axis(size: int, a: int, b: int) -> tuple[int, int, int]:
        total = math.ceil((size + a + b) / OUTPAINT_MULTIPLE) * OUTPAINT_MULTIPLE
        grow = total - size
        first = a * grow // (a + b) if a else 0
        second = grow - first if b else 0
        return total, first, second

    canvas_w, left, right = axis(width, left, right)
    canvas_h, up, down = axis(height, up, down)
    return (canvas_w, canvas_h), (left, right, up, down)


def render_size(task) -> tuple[int, int]:
    """The size an inpaint task's diffusion runs at: the outpaint canvas, else the task's size."""
    if not any(task.outpaint):
        return task.width, task.height
    return outpaint_geometry(task.width, task.height, *task.outpaint)[0]
