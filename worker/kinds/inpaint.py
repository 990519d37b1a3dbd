"""Inpaint and outpaint (A1111 1.10's img2img "Inpaint upload" and its "Poor man's outpainting"):
an img2img pass over an init image whose masked area is repainted, the rest composited back.

The mask steps (blur, invert, "Only masked" crop, fill, the overlay) are worker/masks.py's. Here:
- the prepared image is encoded (the VAE posterior's mean, as the hires fix does); "latent noise"
  puts the seed's noise (without a variation seed, as A1111) in the masked latents, "latent
  nothing" zeros;
- an inpainting checkpoint's UNet (9 input channels) gets A1111's conditioning beside the latents:
  the mask (rounded, at latent size) and the latents of the image with the masked area zeroed;
- every model gets A1111's latent blend at each step: the denoised prediction is put back to the
  init latents outside the mask (the latent mask, rounded), so the sampler only changes the inside;
- the decoded image is composited under the original outside the (blurred) mask.
The pass itself is the hires fix's img2img call (A1111's step rule, worker.rng's noise), so the
conditioning, prompt editing and batching are render_batch's.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import numpy as np
import torch
from PIL import Image

from farm.img2img import JUST_RESIZE, resize_image
from farm.inpaint import render_size
from worker import inpainting, masks
from worker import render as diffusion
from worker.families import of_pipeline
from worker.kinds.hires import img2img_call
from worker.rng import image_noise


def render(pipe, slots: list[diffusion.Slot]) -> list[Image.Image]:
    width, height = render_size(slots[0].task)
    return inpaint_images(pipe, slots, [prepare(slot, width, height) for slot in slots])


def prepare(slot: diffusion.Slot, width: int, height: int) -> masks.Prepared:
    """A slot's init image and mask (its inputs) as A1111 prepares them. Outpaint: the init image
    brought to the task's size (its resize mode), then padded (worker/masks.py outpaint_canvas)."""
    task = slot.task
    if "init_image" not in slot.inputs or not (any(task.outpaint) or "mask_image" in slot.inputs):
        raise diffusion.RenderError("an inpaint task needs an init image and a mask (or outpaint sides); "
                                    "this one names neither: submit its job again with this seedfarm")
    image = slot.inputs["init_image"]
    if any(task.outpaint):
        image = resize_image(image, task.resize_mode or JUST_RESIZE, task.width, task.height)
        canvas, mask, latent = masks.outpaint_canvas(image, *task.outpaint, task.mask_blur)
        return masks.prepare(canvas, mask, width, height, mask_blur=2 * task.mask_blur,
                             inpainting_fill=task.inpainting_fill, latent_mask=latent)
    return masks.prepare(image, slot.inputs["mask_image"], width, height,
                         resize_mode=task.resize_mode or JUST_RESIZE, mask_blur=task.mask_blur,
                         invert=task.mask_invert, inpainting_fill=task.inpainting_fill,
                         full_res=task.inpaint_full_res, padding=task.inpaint_full_res_padding)


def inpaint_images(pipe, slots: list[diffusion.Slot], prepared: list[masks.Prepared]) -> list[Image.Image]:
    """Render the slots' prepared images (masks.prepare, one per slot, all of one render size) and
    composite each over its original."""
    by_slot = {id(slot): p for slot, p in zip(slots, prepared)}
    rendered = diffusion.render_batch(pipe, slots, diffusion.Pass(partial(inpaint_call, prepared=by_slot)))
    return [masks.composite(image, p.overlay, p.paste_to) if p.overlay is not None else image
            for image, p in zip(rendered, prepared)]


def latent_mask(mask: Image.Image, height: int, width: int) -> torch.Tensor:
    """A1111's latent mask: the mask resized (bicubic) to the latents' size, rounded to 0 or 1; (1, h, w)."""
    small = mask.convert("L").resize((width, height), resample=Image.Resampling.BICUBIC)
    return torch.from_numpy(np.around(np.asarray(small, dtype=np.float32) / 255.0))[None]


def inpaint_call(pipe, slots: list[diffusion.Slot], kwargs: dict, *, prepared: dict) -> list:
    """The img2img call of these slots from their prepared images (id(slot) -> masks.Prepared)."""
    task = slots[0].task
    entries = [prepared[id(slot)] for slot in slots]
    init = inpainting.encode(pipe, torch.stack([inpainting.pixels(p.image) for p in entries]))
    n, channels, h, w = init.shape
    repaint = torch.stack([latent_mask(p.latent_mask, h, w) if p.latent_mask is not None else torch.ones(1, h, w)
                           for p in entries])
    blend = [p.latent_mask is not None for p in entries]
    for k, (slot, p) in enumerate(zip(slots, entries)):
        if p.latent_mask is None:
            continue
        if slot.task.inpainting_fill == "latent noise":  # A1111: the seed's own noise (no variation)
            noise = image_noise((channels, h, w), slot.seed, task.rng)
            init[k] = init[k] * (1 - repaint[k]) + noise * repaint[k]
        elif slot.task.inpainting_fill == "latent nothing":
            init[k] = init[k] * (1 - repaint[k])
    unet = of_pipeline(pipe).denoiser_of(pipe)
    extra = _inpainting_conditioning(pipe, entries, (h, w)) if inpainting.is_inpainting(unet) else None
    starts = {id(slot): latent for slot, latent in zip(slots, init)}
    with _denoiser_hooks(unet, pipe.scheduler, init, repaint, torch.tensor(blend), extra):
        return img2img_call(pipe, slots, kwargs, init=starts, second_pass=False)


def _inpainting_conditioning(pipe, entries: list[masks.Prepared], size: tuple[int, int]) -> torch.Tensor:
    """A1111's input for an inpainting UNet beside the latents: the mask (rounded, then nearest to
    the latent size; all ones without a mask) and the latents of the image with the masked area
    set to 0 (its conditional mask weight 1); (n, 5, h, w)."""
    pixels = torch.stack([inpainting.pixels(p.image) for p in entries])
    mask = torch.stack([torch.from_numpy(np.asarray(p.mask.convert("L"), dtype=np.float32) / 255.0)[None]
                        if p.mask is not None else torch.ones(1, *pixels.shape[2:]) for p in entries]).round()
    masked = inpainting.encode(pipe, pixels * (1 - mask))
    return torch.cat([torch.nn.functional.interpolate(mask, size=size), masked], dim=1)


def _alpha_bar(scheduler, t: float) -> float:
    """The training schedule's alpha-bar at timestep t; a fractional t (Karras and other sigma
    schedules) sits between two, linear in log-sigma as diffusers' schedulers place it."""
    alphas = scheduler.alphas_cumprod.double()
    lo = min(int(np.floor(t)), len(alphas) - 1)
    hi = min(lo + 1, len(alphas) - 1)
    log_sigma = torch.log(((1 - alphas) / alphas).sqrt())
    weight = t - lo
    sigma = torch.exp((1 - weight) * log_sigma[lo] + weight * log_sigma[hi])
    return float(1 / (1 + sigma * sigma))


@contextmanager
def _denoiser_hooks(unet, scheduler, init: torch.Tensor, repaint: torch.Tensor, blend: torch.Tensor,
                    extra: torch.Tensor | None):
    """While in place, each UNet call gets `extra` (the inpainting conditioning) after its latents,
    and its prediction is changed so that the denoised image it implies is the init latents
    outside the mask (A1111's blend of the denoised latents each step). The UNet sees the
    latents scaled to unit variance whatever the sampler, so alpha-bar of its timestep relates them."""
    v_prediction = scheduler.config.get("prediction_type") == "v_prediction"
    n = init.shape[0]
    seen: list[torch.Tensor] = []

    def before(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        seen[:] = [sample]
        if extra is None:
            return None
        joined = torch.cat([sample, extra.repeat(sample.shape[0] // n, 1, 1, 1).to(sample)], dim=1)
        return inpainting.with_sample(args, kwargs, joined)

    def after(module, args, kwargs, output):
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        a_bar = _alpha_bar(scheduler, float(torch.as_tensor(t).flatten()[0]))
        a, b = a_bar ** 0.5, (1 - a_bar) ** 0.5
        x = seen[0].float()
        out = (output[0] if isinstance(output, tuple) else output.sample).float()
        times = x.shape[0] // n  # 2 under classifier-free guidance
        keep = ((1 - repaint) * blend[:, None, None, None]).repeat(times, 1, 1, 1).to(x)
        target = init.repeat(times, 1, 1, 1).to(x)
        denoised = a * x - b * out if v_prediction else (x - b * out) / max(a, 1e-8)
        denoised = target * keep + denoised * (1 - keep)
        eps = (x - a * denoised) / b
        new = (a * eps - b * denoised if v_prediction else eps).to(seen[0].dtype)
        if isinstance(output, tuple):
            return (new, *output[1:])
        output.sample = new
        return output

    # first: worker.inpainting.full_mask then sees the conditioning given and leaves it
    handles = [unet.register_forward_pre_hook(before, with_kwargs=True, prepend=True),
               unet.register_forward_hook(after, with_kwargs=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
