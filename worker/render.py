"""Rendering one RenderTask (A1111's "one Generate click") with a loaded pipeline.

Seeds follow A1111: image i of the batch has seed + i (and variation seed subseed + i). Its starting
noise comes from worker.rng (source "cpu" or "nv", variation, seed resize) and its per-step noise
(ancestral/SDE samplers) from its own CPU generator, so an image in a batch equals the same seed
rendered alone, on any hardware (diffusers.md section 8). The conditioning (emphasis, long prompts,
clip skip, prompt editing) comes from worker.conditioning.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from PIL import Image

from farm.task import RenderTask
from worker.conditioning import Conditioning, ConditioningError, ScheduledPair, conditioning_schedule, entry_at
from worker.rng import image_noise
from worker.samplers import make_scheduler


class RenderError(Exception):
    """A render produced no usable image; the message is one line."""


def _latent_shape(pipe, task: RenderTask) -> tuple[int, int, int]:
    factor = pipe.vae_scale_factor
    return (pipe.unet.config.in_channels, task.height // factor, task.width // factor)


def initial_latents(pipe, task: RenderTask) -> torch.Tensor:
    """One noise tensor per image from worker.rng, on the CPU in fp32 (the same numbers on every
    GPU), cast to the UNet's dtype. The pipeline moves them to its execution device itself (which
    also works with CPU offload hooks)."""
    shape = _latent_shape(pipe, task)
    resize = (task.seed_resize_width, task.seed_resize_height)
    noise = []
    for i, seed in enumerate(task.seeds):
        subseed = task.subseed + i if task.subseed is not None else None
        noise.append(image_noise(shape, seed, task.rng, subseed, task.subseed_strength, resize))
    return torch.stack(noise).to(dtype=pipe.unet.dtype)


def step_generator(seed: int, shape: tuple[int, ...]) -> torch.Generator:
    """An image's generator for per-step noise: seeded with its seed and moved past one draw of
    the starting noise's size, so the step noise never replays the "cpu" starting noise (and
    images rendered before RNG sources existed stay the same)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    torch.randn((1, *shape), generator=generator)
    return generator


def _batch(positive: torch.Tensor, negative: torch.Tensor, n: int, guided: bool) -> torch.Tensor:
    """The pipeline's layout of a conditioning tensor: n negatives then n positives under CFG."""
    pos = positive.repeat(n, *([1] * (positive.dim() - 1)))
    if not guided:
        return pos
    return torch.cat([negative.repeat(n, *([1] * (negative.dim() - 1))), pos])


def _embeds(entry: ScheduledPair) -> dict:
    kwargs = {"prompt_embeds": entry.positive.embeds, "negative_prompt_embeds": entry.negative.embeds}
    if entry.positive.pooled is not None:  # SDXL
        kwargs.update(pooled_prompt_embeds=entry.positive.pooled, negative_pooled_prompt_embeds=entry.negative.pooled)
    return kwargs


def _switcher(schedule: list[ScheduledPair], current: list[ScheduledPair]):
    """A callback_on_step_end that hands the pipeline the next step's conditioning where prompt
    editing or alternation changes it (diffusers lets the callback replace `prompt_embeds`), and
    keeps current[0] up to date for the composable guidance."""
    sdxl = schedule[0].positive.pooled is not None

    def on_step_end(pipe, i, t, kwargs):
        entry = entry_at(schedule, i + 1)
        if entry is entry_at(schedule, i):
            return {}
        current[0] = entry
        embeds = kwargs["prompt_embeds"]
        guided = pipe.do_classifier_free_guidance
        n = embeds.shape[0] // (2 if guided else 1)
        out = {"prompt_embeds": _batch(entry.positive.embeds, entry.negative.embeds, n, guided).to(embeds)}
        if sdxl:
            pooled = _batch(entry.positive.pooled, entry.negative.pooled, n, guided)
            out["add_text_embeds"] = pooled.to(kwargs["add_text_embeds"])
        return out

    inputs = ["prompt_embeds", "add_text_embeds"] if sdxl else ["prompt_embeds"]
    return on_step_end, inputs


@contextmanager
def composable_guidance(unet, current: list[ScheduledPair], images: int):
    """A1111's composable prompts (`a AND b:0.5`, or one part with a weight `a:1.5`): guidance is
    uncond + cfg * sum_j w_j (cond_j - uncond). The pipeline computes uncond + cfg * (cond - uncond),
    so while this is in place the UNet answers the cond half with uncond + sum_j w_j (cond_j - uncond),
    evaluating each part of current[0] on its own."""
    original = unet.forward
    own = "forward" in unet.__dict__  # an offload hook may have wrapped forward already

    def forward(sample, timestep, encoder_hidden_states=None, added_cond_kwargs=None, **kwargs):
        entry = current[0]
        guided = sample.shape[0] == 2 * images  # [uncond; cond] under classifier-free guidance
        x = sample[images:] if guided else sample

        def eps(c: Conditioning) -> torch.Tensor:
            extra = {}
            if added_cond_kwargs is not None:  # SDXL: each part's own pooled vector
                like = added_cond_kwargs["text_embeds"]
                extra["added_cond_kwargs"] = {"text_embeds": c.pooled.repeat(images, 1).to(like),
                                              "time_ids": added_cond_kwargs["time_ids"][-images:]}
            hidden = c.embeds.repeat(images, 1, 1).to(encoder_hidden_states)
            return original(x, timestep, encoder_hidden_states=hidden, **kwargs, **extra)[0]

        uncond = eps(entry.negative)
        combined = uncond + sum(weight * (eps(c) - uncond) for weight, c in entry.parts)
        return (torch.cat([uncond, combined]) if guided else combined,)

    unet.forward = forward
    try:
        yield
    finally:
        if own:
            unet.forward = original
        else:
            del unet.forward


def render_images(pipe, task: RenderTask) -> list[Image.Image]:
    """Render all of task.seeds in one pipeline call. Raises RenderError on NaN output."""
    if task.width % 8 or task.height % 8:
        raise RenderError(f"width and height must be multiples of 8, got {task.width}x{task.height}")
    seeds = task.seeds
    pipe.scheduler = make_scheduler(pipe.scheduler.config, task.sampler, task.schedule, seeds=seeds)

    latents = initial_latents(pipe, task)
    generators = [step_generator(seed, _latent_shape(pipe, task)) for seed in seeds]
    try:
        schedule = conditioning_schedule(pipe, task.prompt, task.negative_prompt, task.steps, task.clip_skip)
    except ConditioningError as e:
        raise RenderError(str(e)) from None
    kwargs = _embeds(schedule[0])
    current = [schedule[0]]
    if len(schedule) > 1:
        callback, inputs = _switcher(schedule, current)
        kwargs.update(callback_on_step_end=callback, callback_on_step_end_tensor_inputs=inputs)
    composable = any(entry.composable for entry in schedule)
    guidance = composable_guidance(pipe.unet, current, len(seeds)) if composable else nullcontext()

    with torch.inference_mode(), guidance:
        result = pipe(
            **kwargs,
            num_images_per_prompt=len(seeds),
            num_inference_steps=task.steps,
            guidance_scale=task.cfg,
            width=task.width,
            height=task.height,
            latents=latents,
            generator=generators,  # per-step noise of ancestral/SDE samplers, per image
            output_type="np",
        )
    images = result.images  # float (n, h, w, 3) in [0, 1]
    if np.isnan(images).any():
        raise RenderError(
            f"the render produced NaN pixels (sampler {task.sampler}, schedule {task.schedule}, "
            f"{task.steps} steps); try another sampler or fp32"
        )
    return [Image.fromarray((img * 255).round().astype("uint8")) for img in images]
