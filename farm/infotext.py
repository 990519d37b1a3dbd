"""A1111 infotext, both ways: the `parameters` text that A1111's PNG Info, civitai and others read.

Written from A1111's behaviour (modules/processing.py, create_infotext; modules/infotext_utils.py,
parse_generation_parameters; A1111 is AGPL: no code taken). The writer matches A1111 byte for
byte; the reader follows A1111's rules and also reads back bare keys (a key written alone because
its value equals it), which A1111 itself drops. Which pairs a render parameter writes, and how
each reads back into a spec, is its row in farm/params.py.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import zlib

from PIL import Image, PngImagePlugin

import farm
from farm.params import INFOTEXT_TYPES, infotext_parameters
from farm.task import RenderTask

# A1111's key order; keys not listed keep their insertion order after these, then Version and User.
KEY_ORDER = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration",
    "Size", "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE",
    "Variation seed", "Variation seed strength", "Seed resize from", "Denoising strength",
    "Conditional mask weight", "Clip skip", "ENSD", "Token merging ratio", "Token merging ratio hr",
    "Init image hash", "RNG", "Tiling",
)
LAST_KEYS = ("Version", "User")

NEGATIVE_PREFIX = "Negative prompt:"

# Keys whose values the reader turns into numbers (only these: a model name "123" or a hash made
# only of digits must stay text): the parameters' own (farm/params.py) and A1111 keys seedfarm reads.
INT_KEYS = {k for k, kind in INFOTEXT_TYPES.items() if kind is int} | {"Hires steps", "Size-1", "Size-2"}
NUMBER_KEYS = {k for k, kind in INFOTEXT_TYPES.items() if kind is float} | {
    "Image CFG scale", "Denoising strength", "Conditional mask weight", "Token merging ratio",
    "Token merging ratio hr", "Hires upscale",
}
# What A1111 assumes when an infotext leaves these out.
READER_DEFAULTS = {"Clip skip": 1, "RNG": "GPU", "Schedule type": "Automatic"}

# One `key: value` pair: a key is a word char then word chars, spaces, '-' or '/'; a value is a
# double-quoted JSON string or anything up to the next comma.
_KEY = r"\w[\w \-/]{0,63}"  # bounded: an unbounded key made reading a long line quadratic
_PAIR = re.compile(r'\s*(' + _KEY + r'):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
# A bare key (written alone because its value equals it), e.g. ", Tiling,".
_BARE = re.compile(r"\s*(" + _KEY + r")\s*(?:,|$)")
_WXH = re.compile(r"^(\d+)x(\d+)$")


def task_parameters(task: RenderTask, seed: int) -> dict[str, object]:
    """The ordered key/value pairs A1111 would write for the image of `task` with `seed` (each
    parameter's pairs come from its row in farm/params.py)."""
    params = infotext_parameters(task, seed)
    params["Version"] = f"seedfarm {farm.__version__}"
    return dict(_ordered(params))


def _quote(text: str) -> str:
    if "," in text or "\n" in text or ":" in text:
        return json.dumps(text, ensure_ascii=False)
    return text


def _ordered(params: dict) -> list[tuple[str, object]]:
    known = [k for k in KEY_ORDER if k in params]
    last = [k for k in LAST_KEYS if k in params]
    extra = [k for k in params if k not in KEY_ORDER and k not in LAST_KEYS]
    return [(k, params[k]) for k in known + extra + last]


def format_infotext(prompt: str, negative_prompt: str, params: dict) -> str:
    """Prompt, `Negative prompt: ...` (only when non-empty), then the `Key: value, ...` line."""
    pairs = []
    for key, value in _ordered(params):
        if value is None:
            continue
        text = str(value)
        pairs.append(key if key == text else f"{key}: {_quote(text)}")
    lines = [prompt]
    if negative_prompt:
        lines.append(f"{NEGATIVE_PREFIX} {negative_prompt}")
    lines.append(", ".join(pairs))
    return "\n".join(lines).strip()


def _typed(key: str, value: str) -> object:
    if key in INT_KEYS and re.fullmatch(r"-?\d+", value):
        return int(value)
    if key in NUMBER_KEYS:
        try:
            number = float(value)
        except ValueError:
            return value
        return int(value) if re.fullmatch(r"-?\d+", value) else number
    return value


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            return json.loads(value)
        except ValueError:
            return value  # A1111 also keeps a value it cannot decode as it is
    return value


def _parse_parameter_line(line: str) -> dict[str, object]:
    params: dict[str, object] = {}
    pos = 0
    while pos < len(line):
        m = _PAIR.match(line, pos)
        if m:
            key, value = m.group(1).strip(), _unquote(m.group(2).strip())
            size = _WXH.match(value)
            params[key] = _typed(key, value)
            if size:
                params[f"{key}-1"] = int(size.group(1))
                params[f"{key}-2"] = int(size.group(2))
        else:
            m = _BARE.match(line, pos)
            if m:
                params[m.group(1).strip()] = m.group(1).strip()
            else:  # not a pair: skip to the next comma, as A1111's scan does
                comma = line.find(",", pos)
                pos = len(line) if comma < 0 else comma + 1
                continue
        pos = m.end()
    return params


def parse_infotext(text: str) -> tuple[str, str, dict[str, object]]:
    """(prompt, negative prompt, parameters). Numbers come back as int/float for the keys in
    INT_KEYS/NUMBER_KEYS, everything else as text; `WxH` values also give `Key-1`, `Key-2`; keys
    A1111 assumes when missing (READER_DEFAULTS) are added."""
    lines = text.strip().split("\n")
    params: dict[str, object] = {}
    if len(_PAIR.findall(lines[-1])) >= 3:
        params = _parse_parameter_line(lines.pop())
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX):].strip()
        (negative if in_negative else prompt).append(line)
    for key, value in READER_DEFAULTS.items():
        params.setdefault(key, value)
    return "\n".join(prompt).strip(), "\n".join(negative).strip(), params


def png_bytes(image: Image.Image, infotext: str, more: dict[str, str] | None = None) -> bytes:
    """The image as PNG with the infotext in a `parameters` chunk: tEXt when the text is latin-1,
    iTXt (UTF-8) otherwise, as A1111 writes it; none when the infotext is "" (an upscaled image
    whose source had none). `more`: other text chunks (A1111's Extras: postprocessing, extras)."""
    info = PngImagePlugin.PngInfo()
    for key, text in {"parameters": infotext, **(more or {})}.items():
        if text:
            info.add_text(key, text)  # Pillow picks iTXt itself when latin-1 cannot hold it
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


# An image larger than this is not decoded to look for a text chunk after its pixels: a hostile
# file can claim a size whose pixels would take gigabytes (A1111 renders are a few megapixels).
MAX_READ_PIXELS = 64 * 2**20
# Infotext longer than this is not parsed: the longest real ones (two 20,000-character prompts) fit.
MAX_INFOTEXT_CHARS = 100_000


class ImageReadError(ValueError):
    """An image seedfarm will not read, as one line."""


def read_parameters(data: bytes | str | os.PathLike) -> str | None:
    """The infotext of an image (bytes or a path), or None when it has none: a PNG's `parameters`
    text chunk, or the EXIF UserComment of a JPEG/WebP (A1111's "Save as JPEG/WebP").
    Raises ImageReadError (one line) for a file Pillow cannot read or refuses (decompression
    bombs, text chunks that inflate past Pillow's limit, a truncated file) and for oversized text."""
    try:
        text = _read_parameters(data)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"refused as a decompression bomb: {e}".split(" could be")[0].rstrip(", ")) from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, MemoryError,
            struct.error, zlib.error) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ImageReadError(f"not an image Pillow can read ({reason})") from None
    if text is not None and len(text) > MAX_INFOTEXT_CHARS:
        raise ImageReadError(f"its parameters text is {len(text):,} characters; the limit is {MAX_INFOTEXT_CHARS:,}")
    return text


def _read_parameters(data: bytes | str | os.PathLike) -> str | None:
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    with Image.open(source) as image:
        if image.width * image.height > MAX_READ_PIXELS:
            raise ImageReadError(f"the image is {image.width}x{image.height} pixels; seedfarm reads images "
                                 f"up to {MAX_READ_PIXELS // 2**20} megapixels")
        text = image.info.get("parameters")
        if text is None:
            image.load()  # a text chunk after the pixel data is read only with the pixels
            text = image.info.get("parameters")
        if text is None:
            text = _user_comment(image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT))
    return str(text) if text is not None else None


EXIF_IFD, USER_COMMENT = 0x8769, 0x9286


def _user_comment(value: bytes | str | None) -> str | None:
    """EXIF UserComment: an 8-byte charset code, then the text (A1111 writes `UNICODE\\0` and
    UTF-16 big-endian)."""
    if value is None or isinstance(value, str):
        return value or None
    code, body = value[:8], value[8:]
    if code.startswith(b"UNICODE"):
        # big-endian as A1111 writes it; a BOM-less little-endian text has its zero bytes second
        little = len(body) > 1 and body[0] != 0 and body[1] == 0
        text = body.decode("utf-16-le" if little else "utf-16-be", errors="replace")
    else:
        text = body.decode("utf-8" if code.startswith(b"ASCII") else "latin-1", errors="replace")
    return text.rstrip("\0") or None
