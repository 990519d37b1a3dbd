"""Inpainting checkpoints (sd-v1-5-inpainting and its merges, SDXL inpainting): a UNet of 9 input
channels, the latents then 5 of conditioning: a mask and the latents of the masked image. They load
as their family's pipeline with that UNet (worker/pipelines.py) and render every kind, as A1111
renders them: every pass gives the UNet its extra input. Without a mask (txt2img, the hires fix,
img2img) that is a mask of ones and an all-gray image, i.e. "repaint everything"; the inpaint kind
(worker/kinds/inpaint.py) puts its own mask and masked image there.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image

from worker.families import of_pipeline


# What an inpainting UNet takes besides the latents: the mask and the masked image's latents.
EXTRA_CHANNELS = 5


def is_inpainting(unet) -> bool:
    """An SD UNet taking 5 input channels more than it gives back (the latents')."""
    out = getattr(unet.config, "out_channels", None)
    return out is not None and unet.config.in_channels == out + EXTRA_CHANNELS


def pixels(image: Image.Image) -> torch.Tensor:
    """8-bit RGB -> (3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def encode(pipe, images: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) in [-1, 1] -> latents on the CPU in fp32: the VAE posterior's mean times its
    scaling factor (A1111 draws a sample, whose spread is tiny; the hires fix takes the mean too)."""
    vae = pipe.vae
    with torch.inference_mode():
        latents = vae.encode(images.to(pipe._execution_device, vae.dtype)).latent_dist.mode()
    latents = latents.float() * vae.config.scaling_factor
    if torch.isnan(latents).any():
        from worker.render import RenderError  # (worker.render uses full_mask)

        raise RenderError("the VAE produced NaN latents encoding an image; try a float32 VAE")
    return latents.cpu()


def with_sample(args: tuple, kwargs: dict, sample: torch.Tensor) -> tuple[tuple, dict]:
    """A UNet call's (args, kwargs) with another sample (a forward pre-hook's answer)."""
    if args:
        return (sample, *args[1:]), kwargs
    return args, {**kwargs, "sample": sample}


@contextmanager
def full_mask(pipe):
    """While in place, an inpainting UNet called with the latents alone gets A1111's conditioning of
    a pass without a mask: a mask of ones and the latents of an all-gray image (0 in [-1, 1])."""
    unet = of_pipeline(pipe).denoiser_of(pipe)
    if not is_inpainting(unet):
        yield
        return
    channels = unet.config.out_channels
    gray: dict[tuple[int, int], torch.Tensor] = {}  # per latent size

    def before(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        if sample.shape[1] != channels:  # a kind gave it its own conditioning already
            return None
        h, w = sample.shape[2:]
        if (h, w) not in gray:
            factor = pipe.vae_scale_factor
            latents = encode(pipe, torch.zeros(1, 3, h * factor, w * factor))
            gray[(h, w)] = torch.cat([torch.ones(1, 1, h, w), latents], dim=1)
        extra = gray[(h, w)].to(sample).expand(sample.shape[0], -1, -1, -1)
        return with_sample(args, kwargs, torch.cat([sample, extra], dim=1))

    handle = unet.register_forward_pre_hook(before, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
