"""Rendering one RenderTask (A1111's "one Generate click") with a loaded pipeline.

Seeds follow A1111: image i of the batch has seed + i, and has its own CPU generator. Its starting
noise and its per-step noise (ancestral/SDE samplers) both come from that generator, so an image in
a batch equals the same seed rendered alone, on any hardware's RNG (diffusers.md section 8).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from farm.task import RenderTask
from worker.samplers import make_scheduler


class RenderError(Exception):
    """A render produced no usable image; the message is one line."""


def _text_model(text_encoder):
    # transformers >= 5.6 flattened CLIPTextModel; older versions wrap it in .text_model.
    return getattr(text_encoder, "text_model", text_encoder)


@torch.inference_mode()
def encode_prompt(pipe, text: str, clip_skip: int = 1) -> torch.Tensor:
    """CLIP embeddings (1, 77, dim) with A1111's clip skip: the output of layer -clip_skip, then the
    final layer norm (clip skip 1 = the usual last_hidden_state). Done here rather than with
    diffusers' `clip_skip=`, which crashes on transformers >= 5.6 (diffusers.md section 6) and counts
    one lower than A1111. Prompts longer than 75 tokens are truncated for now, as diffusers does."""
    if hasattr(pipe, "maybe_convert_prompt"):  # expands multi-vector textual-inversion tokens
        text = pipe.maybe_convert_prompt(text, pipe.tokenizer)
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    ids = tokenizer(
        text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(text_encoder.device)
    if clip_skip <= 1:
        return text_encoder(ids)[0]
    out = text_encoder(ids, output_hidden_states=True)
    layers = len(out.hidden_states) - 1  # hidden_states = embeddings + one per layer
    if clip_skip > layers:
        raise RenderError(f"clip skip {clip_skip} is more than the text encoder's {layers} layers")
    return _text_model(text_encoder).final_layer_norm(out.hidden_states[-clip_skip])


def initial_latents(pipe, task: RenderTask, generators: list[torch.Generator]) -> torch.Tensor:
    """One noise tensor per image, each from its own generator, drawn on the CPU in fp32 (the same
    numbers on every GPU, as A1111's RNG source "CPU"), then cast to the UNet's dtype. The pipeline
    moves them to its execution device itself (which also works with CPU offload hooks)."""
    factor = pipe.vae_scale_factor
    shape = (1, pipe.unet.config.in_channels, task.height // factor, task.width // factor)
    noise = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
    return torch.cat(noise).to(dtype=pipe.unet.dtype)


def render_images(pipe, task: RenderTask) -> list[Image.Image]:
    """Render all of task.seeds in one pipeline call. Raises RenderError on NaN output."""
    if task.width % 8 or task.height % 8:
        raise RenderError(f"width and height must be multiples of 8, got {task.width}x{task.height}")
    pipe.scheduler = make_scheduler(pipe.scheduler.config, task.sampler, task.schedule)

    seeds = task.seeds
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    latents = initial_latents(pipe, task, generators)
    prompt_embeds = encode_prompt(pipe, task.prompt, task.clip_skip)
    negative_embeds = encode_prompt(pipe, task.negative_prompt, task.clip_skip)

    with torch.inference_mode():
        result = pipe(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
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
