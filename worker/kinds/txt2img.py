"""txt2img (A1111's txt2img tab): images from starting noise and a prompt, with the task's sampler,
steps, cfg, seeds and conditioning. The diffusion itself is worker/render.py's render_batch."""

from __future__ import annotations

from PIL import Image

from worker import render as diffusion


def render(pipe, slots: list[diffusion.Slot]) -> list[Image.Image]:
    # through the module attribute, so a test can stand in for the diffusion call
    return diffusion.render_batch(pipe, slots)
