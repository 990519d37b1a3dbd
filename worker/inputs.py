"""A task's input images on the worker: read from the job's store by content name
(RenderTask.init_image ...; farm/inputs.py), verified against that name's sha256, decoded with the
same caps as on the coordinator, and handed to the kind as PIL images in the field's mode (RGB, an
image with transparency flattened onto white as A1111 does; masks "L").

A missing or altered input is a TaskError (one line): the task fails, the worker goes on.
"""

from __future__ import annotations

import hashlib

from PIL import Image

from farm.inputs import INPUT_FIELDS, InputError, flatten, is_input_name, open_image
from farm.store import Store, layout
from farm.task import RenderTask
from worker.context import TaskError


def read_input(store: Store, job: str, name: str, mode: str = "RGB") -> Image.Image:
    """The input `name` ("<sha256>.<ext>") of the job, decoded in `mode`. Raises TaskError."""
    if not is_input_name(name):
        raise TaskError(f"input '{name[:80]}' is not a content name (<sha256>.<ext>)")
    key = layout.input_key(job, name)
    try:
        data = store.read_bytes(key)
    except FileNotFoundError:
        raise TaskError(f"input {name[:12]}... is not in the store at {store.describe(key)}; "
                        "submit the job again to upload it") from None
    if hashlib.sha256(data).hexdigest() != name.split(".")[0]:
        raise TaskError(f"input {store.describe(key)} does not hash to its name: it was altered; "
                        "submit the job again")
    try:
        image = open_image(data)
    except InputError as e:
        raise TaskError(f"input {store.describe(key)}: {e}") from None
    return to_mode(image, mode)


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """RGB: transparency flattened onto white (A1111's img2img background colour); else converted."""
    return flatten(image) if mode == "RGB" else image.convert(mode)


class InputCache:
    """The inputs of one diffusion batch's tasks, each read once (tasks of a sweep share them)."""

    def __init__(self, store: Store):
        self.store = store
        self._images: dict[tuple[str, str, str], Image.Image] = {}

    def of(self, task: RenderTask) -> dict[str, Image.Image]:
        """field -> image for every input the task names (INPUT_FIELDS); {} for a txt2img task."""
        out = {}
        for field, mode in INPUT_FIELDS.items():
            name = getattr(task, field, "")
            if name:
                key = (task.job, name, mode)
                if key not in self._images:
                    self._images[key] = read_input(self.store, task.job, name, mode)
                out[field] = self._images[key]
        return out
