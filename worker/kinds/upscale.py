"""The upscale kind (A1111 1.10's Extras tab, one image at a time; farm/upscale.py): the task's init
image upscaled by an upscaler model or Lanczos/Nearest, `upscale_by` (A1111's "Scale by") or
`upscale_to` WxH (A1111's "Scale to" with "Crop to fit": covered, then centred on the canvas).

No diffusion: the render loop loads no checkpoint for this kind (PIPELINE False) and calls
`render(None, slots)`. The PNG keeps the source's `parameters` text and says what Extras did in
its own `postprocessing` and `extras` chunks, as A1111 writes them (png_texts).
"""

from __future__ import annotations

from PIL import Image

from farm.hires import is_model_upscaler
from farm.upscale import postprocess_text
from worker import render as diffusion
from worker.upscalers import task_upscaler, upscale

PIPELINE = False  # the render loop loads no checkpoint for this kind


def render(pipe, slots: list[diffusion.Slot]) -> list[Image.Image]:
    task = slots[0].task
    model = task_upscaler(task.upscaler, task.upscaler_hash) if is_model_upscaler(task.upscaler) else None
    return [upscale_one(slot.inputs["init_image"], task, model) for slot in slots]


def upscale_one(source: Image.Image, task, model) -> Image.Image:
    """One source image as A1111's Extras upscales it; its `parameters` text rides along in .info."""
    image = source
    if task.upscaler != "None":
        to_x, to_y = task.upscale_to_x, task.upscale_to_y
        by = max(to_x / source.width, to_y / source.height) if to_x and to_y else task.upscale_by
        image = upscale(source, by, model or task.upscaler)
        if to_x and to_y:  # "Crop to fit": centred on a canvas of exactly that size
            canvas = Image.new("RGB", (to_x, to_y))
            canvas.paste(image, (to_x // 2 - image.width // 2, to_y // 2 - image.height // 2))
            image = canvas
    if (image.width, image.height) != (task.width, task.height):
        raise diffusion.RenderError(f"upscaled to {image.width}x{image.height}, expected {task.width}x{task.height}")
    image = image.copy() if image is source else image
    image.info = {"parameters": source.info.get("parameters", "")}
    return image


def png_texts(task, seed: int, image: Image.Image, extra: dict) -> tuple[str, dict[str, str]]:
    """(the `parameters` text: the source's, unchanged; the other PNG text chunks)."""
    done = postprocess_text(task.upscaler, task.upscale_by, task.upscale_to_x, task.upscale_to_y)
    return image.info.get("parameters", ""), ({"postprocessing": done, "extras": done} if done else {})
