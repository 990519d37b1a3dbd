"""Hires fix (A1111 1.10's txt2img "Hires. fix"): a txt2img first pass at the task's size, upscaled
to the hires size (farm/hires.py) in latent space or as pixels, then an img2img second pass at that
size with A1111's step and strength rule.

- Latent upscalers: the first pass's latents are interpolated (torch's mode and antialias per
  A1111's name). Pixel upscalers (None, Lanczos, Nearest, and upscaler models such as ESRGAN,
  worker/upscalers.py): the first pass is decoded to 8-bit pixels, resized as A1111 does, and
  encoded again with the VAE (the posterior's mean: A1111 draws a sample from it, whose spread is
  tiny but not zero).
- hr_resize with both sides: upscaled to cover the box, then the latents are cropped to it.
- The second pass's starting noise is worker.rng's for the same seeds (and variation seed, seed
  resize) at the hires latent size, as A1111 makes a fresh noise source at that size; its sampler,
  schedule, CFG and prompts are the hr_ ones, or the first pass's.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from PIL import Image

from farm.hires import LATENT_UPSCALERS, hires_size, img2img_steps, is_model_upscaler, size_problem
from farm.params import refines
from worker import render as diffusion
from worker.rng import image_noise, step_generator
from worker.samplers import make_scheduler
from worker.upscalers import Upscaler, task_upscaler
from worker.upscalers import upscale as model_upscale


def render(pipe, slots: list[diffusion.Slot]) -> list[Image.Image]:
    task = slots[0].task
    if refines(task):  # the spec refuses it too; a task from elsewhere gets the same line
        raise diffusion.RenderError("a refiner is not supported with hires fix yet")
    problem = size_problem(task.width, task.height, task.hr_scale, task.hr_resize_x, task.hr_resize_y)
    if problem:
        raise diffusion.RenderError(problem)
    (up_w, up_h), (width, height) = hires_size(task.width, task.height, task.hr_scale,
                                               task.hr_resize_x, task.hr_resize_y)
    factor = pipe.vae_scale_factor
    # an upscaler model loads (and a bad file fails) before the first pass renders
    model = task_upscaler(task.hr_upscaler, task.upscaler_hash) if is_model_upscaler(task.hr_upscaler) else None
    if task.hr_upscaler in LATENT_UPSCALERS:
        first = diffusion.render_batch(pipe, slots, FIRST_PASS_LATENTS)
        mode, antialias = LATENT_UPSCALERS[task.hr_upscaler]
        latents = torch.nn.functional.interpolate(torch.stack(first).float(), size=(up_h // factor, up_w // factor),
                                                  mode=mode, antialias=antialias)
    else:
        pixels = diffusion.render_batch(pipe, slots, FIRST_PASS_PIXELS)
        images = [upscale_image(image, up_w, up_h, task.hr_upscaler, model) for image in pixels]
        latents = encode_images(pipe, images)
    # cover-then-crop (hr_resize WxH of another aspect): the crop is centred, in latent pixels
    cut_x, cut_y = (up_w - width) // factor, (up_h - height) // factor
    latents = latents[:, :, cut_y // 2 : latents.shape[2] - (cut_y + 1) // 2,
                      cut_x // 2 : latents.shape[3] - (cut_x + 1) // 2]
    init = {id(slot): latent for slot, latent in zip(slots, latents)}
    second = diffusion.Pass(
        call=partial(img2img_call, init=init, second_pass=True),
        prompts=lambda t: (t.hr_prompt or t.prompt, t.hr_negative_prompt or t.negative_prompt),
        steps=lambda t: img2img_steps(t.steps, t.denoising_strength, t.hr_steps)[1],
    )
    return diffusion.render_batch(pipe, slots, second)


def _first_pass_pixels(pipe, slots, kwargs) -> list[Image.Image]:
    """The first pass decoded as A1111 hands it to a pixel upscaler: 8-bit, truncated (not rounded)."""
    images = diffusion.txt2img_call(pipe, slots, kwargs, output="pt")
    images = torch.as_tensor(images if not isinstance(images, list) else torch.stack(images)).float()
    if torch.isnan(images).any():
        raise diffusion.RenderError("the first pass of the hires fix produced NaN pixels; try another sampler or fp32")
    arrays = (255.0 * images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()).astype(np.uint8)
    return [Image.fromarray(a) for a in arrays]


FIRST_PASS_LATENTS = diffusion.Pass(partial(diffusion.txt2img_call, output="latent"))
FIRST_PASS_PIXELS = diffusion.Pass(_first_pass_pixels)


def upscale_image(image: Image.Image, width: int, height: int, upscaler: str,
                  model: Upscaler | None = None) -> Image.Image:
    """A1111's "Just resize" with a pixel upscaler: None is Lanczos straight to the size; Lanczos and
    Nearest scale by the factor with their filter (to a multiple of 8), then Lanczos to the size; an
    upscaler model (`model`) runs by its own scale until the image reaches the size (worker/upscalers.py)."""
    if upscaler == "None":
        return image.resize((width, height), resample=Image.Resampling.LANCZOS)
    scale = max(width / image.width, height / image.height)
    if scale > 1:
        image = model_upscale(image, scale, model or upscaler)
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    return image


def encode_images(pipe, images: list[Image.Image]) -> torch.Tensor:
    """8-bit RGB images -> the denoiser's latents (the VAE posterior's mean, times its scaling factor)."""
    vae = pipe.vae
    x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
                     for im in images])
    with torch.inference_mode():
        latents = vae.encode(x.to(pipe._execution_device, vae.dtype)).latent_dist.mode()
    latents = latents.float() * vae.config.scaling_factor
    if torch.isnan(latents).any():
        raise diffusion.RenderError("the VAE produced NaN latents encoding the upscaled image; try a float32 VAE")
    return latents.cpu()


def img2img_call(pipe, slots: list[diffusion.Slot], kwargs: dict, *, init: dict, second_pass: bool) -> list:
    """An img2img pipeline call from the starting latents `init` (id(slot) -> (C, H, W)), with A1111's
    steps (farm/hires.py img2img_steps) and worker.rng's noise at the latents' size. second_pass:
    the hires fix's (hr_ sampler, schedule, CFG and steps), else the task's own."""
    from diffusers import AutoPipelineForImage2Image

    task = slots[0].task
    if second_pass:
        sampler = task.hr_sampler or task.sampler
        schedule = task.hr_schedule or task.schedule
        cfg = task.cfg if task.hr_cfg is None else task.hr_cfg
        total, run = img2img_steps(task.steps, task.denoising_strength, task.hr_steps)
    else:
        sampler, schedule, cfg = task.sampler, task.schedule, task.cfg
        total, run = img2img_steps(task.steps, task.denoising_strength)
    seeds = [slot.seed for slot in slots]
    i2i = AutoPipelineForImage2Image.from_pipe(pipe)
    i2i.set_progress_bar_config(disable=True)
    i2i.scheduler = make_scheduler(pipe.scheduler.config, sampler, schedule, seeds=seeds, eta=task.eta)
    dtype = getattr(pipe, "seedfarm_dtype", None) or pipe.unet.dtype
    start = torch.stack([init[id(slot)] for slot in slots]).to(dtype)
    shape = tuple(start.shape[1:])
    resize = (task.seed_resize_width, task.seed_resize_height)
    noise = torch.stack([image_noise(shape, slot.seed, task.rng, slot.subseed, task.subseed_strength, resize)
                         for slot in slots]).to(dtype)

    def get_timesteps(num_inference_steps, strength, device, denoising_start=None):
        # A1111: the last `run` steps of a schedule of `total` (diffusers' rule runs one fewer)
        begin = (total - run) * i2i.scheduler.order
        if hasattr(i2i.scheduler, "set_begin_index"):
            i2i.scheduler.set_begin_index(begin)
        return i2i.scheduler.timesteps[begin:], run

    def prepare_latents(image, timestep, *args, **kw):
        device = timestep.device
        return i2i.scheduler.add_noise(start.to(device), noise.to(device), timestep[:1].repeat(len(slots)))

    i2i.get_timesteps = get_timesteps
    i2i.prepare_latents = prepare_latents
    generators = [step_generator(slot.seed, shape, slot.task.ensd) for slot in slots]
    result = i2i(
        **kwargs,
        image=start,  # latents: the pipeline's preprocessing passes them through
        strength=min(task.denoising_strength, 0.999),
        num_images_per_prompt=1,
        num_inference_steps=total,
        guidance_scale=cfg,
        generator=generators,
        output_type="np",
    )
    return diffusion.to_images(result.images, task)
