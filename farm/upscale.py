"""The upscale kind (A1111 1.10's Extras tab, one image at a time), torch-free: its upscaler names,
the size of its output, and the text A1111 writes about it. The spec parser checks with it, the
worker (worker/kinds/upscale.py) renders with it.

- `upscale_by: S` (A1111's "Scale by"): the upscaler's own rule, to the scaled size rounded down to
  multiples of 8 (worker/upscalers.py `upscale`).
- `upscale_to: WxH` (A1111's "Scale to", with its default "Crop to fit"): upscaled by the larger of
  W/w and H/h, then centred on a WxH canvas (black where it falls short, cut where it overflows).
- Upscaler "None" leaves the image as it is (A1111 skips the step, and writes nothing about it).

A1111 keeps the source image's `parameters` text and writes what Extras did in PNG text chunks of
their own, `postprocessing` and `extras`: "Postprocess upscale by: 2, Postprocess upscaler: NAME"
(or "Postprocess upscale to: WxH, Postprocess crop to: WxH, Postprocess upscaler: NAME").
"""

from __future__ import annotations

import json
import re

from farm.hires import IMAGE_UPSCALERS

# A spec with any of these keys renders kind "upscale" over its init_images.
UPSCALE_KEYS = ("upscaler", "upscale_by", "upscale_to")
# The spec keys an upscale job takes (besides the job's own: name, grid, output ...).
UPSCALE_AXES = ("init_images", *UPSCALE_KEYS)
EXTRAS_UPSCALERS = IMAGE_UPSCALERS  # None, Lanczos, Nearest; the Latent ones are hires fix's
DEFAULT_UPSCALER = "Lanczos"
DEFAULT_UPSCALE_BY = 2.0
MAX_UPSCALE_BY = 8.0  # A1111's slider
MAX_SIDE = 16384  # pixels a side of the output, as for width and height


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def output_size(width: int, height: int, upscaler: str, by: float, to_x: int = 0, to_y: int = 0
                ) -> tuple[int, int]:
    """The (width, height) an upscale of a width x height image makes."""
    if upscaler == "None":
        return width, height
    if to_x and to_y:
        return to_x, to_y
    return int(width * by // 8 * 8), int(height * by // 8 * 8)


def size_problem(width: int, height: int, upscaler: str, by: float, to_x: int = 0, to_y: int = 0) -> str | None:
    """Why an upscale of a width x height image cannot be made, or None."""
    w, h = output_size(width, height, upscaler, by, to_x, to_y)
    how = f"upscale_to {to_x}x{to_y}" if to_x and to_y else f"upscale_by {by:g}"
    if min(w, h) < 8:
        return f"{how} makes a {width}x{height} image {w}x{h} (A1111 rounds down to multiples of 8); give a larger scale"
    if max(w, h) > MAX_SIDE:
        return f"{how} makes a {width}x{height} image {w}x{h}; at most {MAX_SIDE} pixels a side"
    return None


def postprocess_text(upscaler: str, by: float, to_x: int = 0, to_y: int = 0) -> str:
    """What A1111's Extras writes about an upscale (its `postprocessing` text); "" for None."""
    if upscaler == "None":
        return ""
    if to_x and to_y:
        pairs = {"Postprocess upscale to": f"{to_x}x{to_y}", "Postprocess crop to": f"{to_x}x{to_y}"}
    else:
        pairs = {"Postprocess upscale by": _number(by)}
    pairs["Postprocess upscaler"] = upscaler
    return ", ".join(f"{key}: {_quote(str(value))}" for key, value in pairs.items())


def _quote(text: str) -> str:
    """A1111's infotext quoting: a value with a comma, colon or line break as a JSON string."""
    return json.dumps(text, ensure_ascii=False) if re.search(r"[,:\n]", text) else text
