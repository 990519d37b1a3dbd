"""A job's input images (img2img init images; inpaint masks): collected from the spec's files,
folders or a finished job of the store, checked as images with bounded cost, pinned by the sha256
of their bytes, and uploaded into the job's store under layout.input_key(job, "<sha256>.<ext>").

Tasks name an input by that content name (RenderTask.init_image), never by a local path a remote
PC cannot read: the same spec with the same files gives the same task ids, and the worker verifies
the bytes it reads against the name (worker/inputs.py). Torch-free: the coordinator uses it.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from farm.store import Store, layout

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")  # what a folder's images are, in name order
# A photo from a phone is 5-15 MB as PNG; 50 MB leaves room for a 64 MP PNG and refuses a file
# that would hold the coordinator's memory for nothing.
MAX_INPUT_BYTES = 50 * 2**20
# Decoded pixels of one input: 64 megapixels (an 8K image) is 192 MB as RGB. A hostile file can
# claim any size in a few bytes: the size is checked before its pixels are decoded.
MAX_INPUT_PIXELS = 64 * 2**20
MAX_FOLDER_IMAGES = 10_000  # images one folder (or a job) may give an axis
# RenderTask fields that name an input, and the mode the worker hands it to a kind in.
INPUT_FIELDS = {"init_image": "RGB", "mask_image": "RGBA"}  # a mask keeps its alpha (worker/masks.py)
_NAME = re.compile(r"[0-9a-f]{64}\.(png|jpg|jpeg|webp)")
_FORMATS = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "WEBP": "webp"}  # MPO: a camera JPEG


class InputError(ValueError):
    """An input image seedfarm will not use, as one line."""


@dataclass(frozen=True)
class InputImage:
    """One input image, pinned: `value` is the axis value (the path as the spec gave it, or
    JOB/images/STEM.png for a job's image), `name` the content name tasks and the store use."""

    value: str
    sha256: str
    ext: str  # png, jpg or webp: what the bytes are, not what the file was called
    width: int
    height: int
    source: str = ""  # a local path, or "store:KEY"; "" when known from a job record only

    @property
    def name(self) -> str:
        return f"{self.sha256}.{self.ext}"

    @property
    def label(self) -> str:
        return label(self.value)

    def record(self) -> list:
        return [self.value, self.name, self.width, self.height]

    @classmethod
    def from_record(cls, entry: list) -> "InputImage":
        value, name, width, height = entry
        sha, ext = str(name).split(".")
        return cls(str(value), sha, ext, int(width), int(height))


def label(value: str) -> str:
    """How an input reads on a grid: its file's stem ('faces/anna.png' -> 'anna'; a content
    name's hash shortened to 10 characters)."""
    stem = PurePosixPath(str(value).replace("\\", "/")).stem or str(value)
    return stem[:10] if re.fullmatch(r"[0-9a-f]{64}", stem) else stem


def is_input_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def open_image(data: bytes) -> Image.Image:
    """The decoded image of `data`, with every cap checked before its pixels are decoded.
    Raises InputError (one line): empty, too many bytes or pixels, not an image Pillow reads."""
    if not data:
        raise InputError("the file is empty")
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(f"the file is {len(data):,} bytes; the limit is {MAX_INPUT_BYTES:,}")
    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in _FORMATS:
            raise InputError(f"a {image.format} file; input images are PNG, JPEG or WebP")
        if image.width * image.height > MAX_INPUT_PIXELS:
            raise InputError(f"the image is {image.width}x{image.height} pixels; the limit is "
                             f"{MAX_INPUT_PIXELS // 2**20} megapixels")
        image.load()
        return image
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError("refused as a decompression bomb") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, MemoryError,
            struct.error, zlib.error) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise InputError(f"not an image Pillow can read ({reason})") from None


def flatten(image: Image.Image) -> Image.Image:
    """RGB, an image with transparency composited onto white (A1111's img2img background colour)."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return image.convert("RGB")


def pin(value: str, data: bytes, source: str) -> InputImage:
    """Check one input's bytes and pin them. Raises InputError."""
    image = open_image(data)
    return InputImage(value, hashlib.sha256(data).hexdigest(), _FORMATS[image.format], image.width,
                      image.height, source)


def read_file(path: Path) -> bytes:
    """A local input's bytes, its size checked before reading. Raises InputError."""
    try:
        size = path.stat().st_size
        if size > MAX_INPUT_BYTES:
            raise InputError(f"the file is {size:,} bytes; the limit is {MAX_INPUT_BYTES:,}")
        return path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read it: {e.strerror or e}") from None


def folder_images(folder: Path) -> list[Path]:
    """A folder's image files (EXTENSIONS, any case), in name order. Raises InputError."""
    try:
        files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS),
                       key=lambda p: p.name)
    except OSError as e:
        raise InputError(f"cannot list the folder: {e.strerror or e}") from None
    if not files:
        raise InputError(f"the folder has no image files ({', '.join(EXTENSIONS)})")
    if len(files) > MAX_FOLDER_IMAGES:
        raise InputError(f"the folder has {len(files):,} images; at most {MAX_FOLDER_IMAGES:,} per axis")
    return files


def job_images(store: Store, job: str, starred: bool) -> list[tuple[str, str]]:
    """(axis value, store key) of a finished job's images, in record order (its expansion order),
    only the starred ones when `starred`. Raises InputError for a job the store does not hold."""
    from farm.review.marks import image_stem, read_marks
    from farm.store import load_records

    if not store.exists(layout.job_record_key(job)):
        raise InputError(f"the store {store.url} has no job {job}")
    records = load_records(store, job)
    if not records:
        raise InputError(f"job {job} has no finished images yet")
    marks = read_marks(store, job) if starred else {}
    out = [(f"{job}/{r['image']}", layout.job_file_key(job, r["image"])) for r in records
           if not starred or marks.get(image_stem(r)) == "star"]
    if not out:
        raise InputError(f"job {job} has no starred images (star some in `farm review`, or use filter: all)")
    if len(out) > MAX_FOLDER_IMAGES:
        raise InputError(f"job {job} has {len(out):,} images; at most {MAX_FOLDER_IMAGES:,} per axis")
    return out


def upload(store: Store, job: str, inputs: list[InputImage]) -> int:
    """Put each input into the job's store under its content name, unless it is there already.
    The bytes are read again and checked against the pinned hash (a file changed since the spec
    was read is refused). Returns how many were written. Raises InputError."""
    written = 0
    for item in inputs:
        key = layout.input_key(job, item.name)
        if store.exists(key):
            continue
        if item.source.startswith("store:"):
            data = store.read_bytes(item.source.removeprefix("store:"))
        elif item.source:
            data = read_file(Path(item.source))
        else:
            raise InputError(f"input {item.value} is not in the store and its file is not known here; "
                             "submit the spec again from the machine that has it")
        if hashlib.sha256(data).hexdigest() != item.sha256:
            raise InputError(f"input {item.value} changed since the spec was read; submit it again")
        store.write_bytes(key, data)
        written += 1
    return written
