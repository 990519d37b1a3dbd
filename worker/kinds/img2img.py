"""img2img (A1111 1.10's img2img tab): each slot's init image (worker/inputs.py: RGB, transparency
flattened onto white) is brought to the task's size with A1111's resize mode (farm/img2img.py),
encoded by the VAE, noised to the strength and denoised with A1111's step rule.

The pass is hires fix's img2img second pass without the hr_ overrides (worker/kinds/hires.py
img2img_call): the last int(strength * steps) + 1 steps of a `steps`-step schedule (farm/hires.py
img2img_steps), starting noise from worker.rng for the image's seed (and variation seed, seed
resize) at the latent size of the task, as A1111 draws it; sampler, schedule, CFG, prompts and
their editing as txt2img. Images of different init images batch: each slot has its own latents.
The VAE encoding is the posterior's mean (A1111 samples it: a tiny, seeded difference).
"""

from __future__ import annotations

from functools import partial

from PIL import Image

from farm.img2img import JUST_RESIZE, resize_image
from farm.params import refines
from worker import render as diffusion
from worker.kinds.hires import encode_images, img2img_call


def render(pipe, slots: list[diffusion.Slot]) -> list[Image.Image]:
    task = slots[0].task
    if refines(task):  # the spec refuses it too; a task from elsewhere gets the same line
        raise diffusion.RenderError("a refiner is not supported with img2img yet")
    if task.width % 8 or task.height % 8:
        raise diffusion.RenderError(f"width and height must be multiples of 8, got {task.width}x{task.height}")
    images = [resize_image(slot.inputs["init_image"], slot.task.resize_mode or JUST_RESIZE, task.width, task.height)
              for slot in slots]
    latents = encode_images(pipe, images)
    init = {id(slot): latent for slot, latent in zip(slots, latents)}
    return diffusion.render_batch(pipe, slots, diffusion.Pass(partial(img2img_call, init=init, second_pass=False)))
