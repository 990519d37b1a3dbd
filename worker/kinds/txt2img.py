"""txt2img (A1111's txt2img tab): images from starting noise and a prompt, with the task's sampler,
steps, cfg, seeds and conditioning. The diffusion itself is worker/render.py's render_batch; with
an SDXL refiner that takes over, worker/refiner.py's."""

from __future__ import annotations

from PIL import Image

from farm.params import refines
from worker import refiner
from worker import render as diffusion


def render(pipe, slots: list[diffusion.Slot]) -> list[Image.Image]:
    if refines(slots[0].task):
        return refiner.render(pipe, slots)
    # through the module attribute, so a test can stand in for the diffusion call
    return diffusion.render_batch(pipe, slots)
