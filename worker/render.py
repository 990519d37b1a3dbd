"""Rendering one RenderTask (A1111's "one Generate click") with a loaded pipeline.

Seeds follow A1111: image i of the batch has seed + i (and variation seed subseed + i). Its starting
noise comes from worker.rng (source "cpu" or "nv", variation, seed resize) and its per-step noise
(ancestral/SDE samplers) from its own CPU generator, so an image in a batch equals the same seed
rendered alone, on any hardware. The conditioning (emphasis, long prompts, clip skip, prompt
editing) comes from worker.conditioning; the pipeline's parts (denoiser, latent channels) from its
family (worker/families/).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from farm.task import RenderTask
from worker.conditioning import Conditioning, ConditioningError, ScheduledPair, conditioning_schedule, entry_at
from worker.families import PartsFamily, of_pipeline
from worker.inpainting import full_mask
from worker.rng import image_noise, step_generator
from worker.samplers import flow_scheduler, make_scheduler


class RenderError(Exception):
    """A render produced no usable image; the message is one line."""


@dataclass(frozen=True)
class Slot:
    """One image of a task: image i of its own batch, with seed + i and variation seed subseed + i.
    `inputs`: the task's input images by RenderTask field (init_image ...; worker/inputs.py)."""

    task: RenderTask
    i: int = 0
    inputs: dict = field(default_factory=dict, compare=False)

    @property
    def seed(self) -> int:
        return self.task.seed + self.i

    @property
    def subseed(self) -> int | None:
        return self.task.subseed + self.i if self.task.subseed is not None else None


def _latent_shape(pipe, task: RenderTask) -> tuple[int, int, int]:
    return of_pipeline(pipe).latent_shape(pipe, task.width, task.height)


def initial_latents(pipe, slots: list[Slot]) -> torch.Tensor:
    """One noise tensor per image from worker.rng, on the CPU in fp32 (the same numbers on every
    GPU), cast to the denoiser's dtype. The pipeline moves them to its execution device itself (which
    also works with CPU offload hooks)."""
    noise = []
    for slot in slots:
        task = slot.task
        resize = (task.seed_resize_width, task.seed_resize_height)
        noise.append(image_noise(_latent_shape(pipe, task), slot.seed, task.rng, slot.subseed,
                                 task.subseed_strength, resize))
    # a GGUF or fp8 denoiser stores its weights in another type than it computes in
    dtype = getattr(pipe, "seedfarm_dtype", None) or of_pipeline(pipe).denoiser_of(pipe).dtype
    return torch.stack(noise).to(dtype=dtype)


def _stack(entries: list[ScheduledPair], what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) conditioning of a batch, one row per image; what: embeds or pooled."""
    positive = torch.cat([getattr(e.positive, what) for e in entries])
    negative = torch.cat([getattr(e.negative, what) for e in entries])
    return positive, negative


def _embeds(entries: list[ScheduledPair]) -> dict:
    positive, negative = _stack(entries, "embeds")
    kwargs = {"prompt_embeds": positive, "negative_prompt_embeds": negative}
    if entries[0].positive.pooled is not None:  # a family with a pooled text vector (SDXL)
        positive, negative = _stack(entries, "pooled")
        kwargs.update(pooled_prompt_embeds=positive, negative_pooled_prompt_embeds=negative)
    return kwargs


def _switcher(schedules: list[list[ScheduledPair]], current: list[ScheduledPair], pooled_input: str | None):
    """A callback_on_step_end that hands the pipeline the next step's conditioning where prompt
    editing or alternation changes it for any image (diffusers lets the callback replace
    `prompt_embeds`, and the family's pooled tensor `pooled_input`), and keeps current[0] (the
    first image's entry) up to date for the composable guidance."""
    pooled = pooled_input if schedules[0][0].positive.pooled is not None else None

    def on_step_end(pipe, i, t, kwargs):
        entries = [entry_at(schedule, i + 1) for schedule in schedules]
        if all(e is entry_at(s, i) for e, s in zip(entries, schedules)):
            return {}
        current[0] = entries[0]
        guided = pipe.do_classifier_free_guidance

        def layout(what: str) -> torch.Tensor:  # the pipeline's: negatives then positives under CFG
            positive, negative = _stack(entries, what)
            return torch.cat([negative, positive]) if guided else positive

        out = {"prompt_embeds": layout("embeds").to(kwargs["prompt_embeds"])}
        if pooled:
            out[pooled] = layout("pooled").to(kwargs[pooled])
        return out

    inputs = ["prompt_embeds", pooled] if pooled else ["prompt_embeds"]
    return on_step_end, inputs


@contextmanager
def composable_guidance(denoiser, current: list[ScheduledPair], images: int):
    """A1111's composable prompts (`a AND b:0.5`, or one part with a weight `a:1.5`): guidance is
    uncond + cfg * sum_j w_j (cond_j - uncond). The pipeline computes uncond + cfg * (cond - uncond),
    so while this is in place the denoiser (a UNet) answers the cond half with uncond + sum_j w_j (cond_j - uncond),
    evaluating each part of current[0] on its own."""
    original = denoiser.forward
    own = "forward" in denoiser.__dict__  # an offload hook may have wrapped forward already

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

    denoiser.forward = forward
    try:
        yield
    finally:
        if own:
            denoiser.forward = original
        else:
            del denoiser.forward


def render_images(pipe, task: RenderTask) -> list[Image.Image]:
    """Render all of task.seeds (one task's own batch). Raises RenderError."""
    return render_batch(pipe, [Slot(task, i) for i in range(task.batch_size)])


# A pass's pipeline call: (pipe, its slots, the conditioning kwargs) -> one output per slot. It sets
# the scheduler, makes the starting latents and calls the pipeline; the kwargs hold the prompt
# embeddings (and the prompt-editing callback) for exactly these slots, in their order.
Call = Callable[[object, list[Slot], dict], list]


@dataclass(frozen=True)
class Pass:
    """One diffusion pass over a batch (txt2img's only pass; hires fix's two; img2img's one): the
    prompts and step count its conditioning is scheduled over, and its pipeline call."""

    call: Call
    prompts: Callable[[RenderTask], tuple[str, str]] = lambda t: (t.prompt, t.negative_prompt)
    steps: Callable[[RenderTask], int] = lambda t: t.steps


def txt2img_call(pipe, slots: list[Slot], kwargs: dict, output: str = "np") -> list:
    """The txt2img pipeline call: the sampler's scheduler, worker.rng's starting noise, per-image
    step generators. output "np": PIL images; "latent": the final latents, one (C, H, W) per slot;
    "pt": the decoded pixels, one (3, H, W) in [0, 1] per slot."""
    task = slots[0].task
    seeds = [slot.seed for slot in slots]
    pipe.scheduler = make_scheduler(pipe.scheduler.config, task.sampler, task.schedule, seeds=seeds, eta=task.eta)
    latents = initial_latents(pipe, slots)
    generators = [step_generator(slot.seed, _latent_shape(pipe, slot.task), slot.task.ensd) for slot in slots]
    result = pipe(
        **kwargs,
        num_images_per_prompt=1,  # the conditioning has one row per image already
        num_inference_steps=task.steps,
        guidance_scale=task.cfg,
        width=task.width,
        height=task.height,
        latents=latents,
        generator=generators,  # per-step noise of ancestral/SDE samplers, per image
        output_type=output,
    )
    if output in ("latent", "pt"):  # latents, or decoded (n, 3, H, W) in [0, 1], for a kind's next step
        return list(result.images)
    return to_images(result.images, task)


TXT2IMG = Pass(txt2img_call)


def render_batch(pipe, slots: list[Slot], how: Pass = TXT2IMG) -> list:
    """Render images of tasks with equal batch keys (farm/batching.py), in as few pipeline calls as
    their conditioning allows (plan_calls); the outputs come back in the order of `slots`, each as
    it would be rendered alone. `how`: the pass (txt2img by default; the kinds in worker/kinds/
    give their own calls). Raises RenderError on a bad prompt or NaN output."""
    task = slots[0].task
    if task.width % 8 or task.height % 8:
        raise RenderError(f"width and height must be multiples of 8, got {task.width}x{task.height}")
    schedules: dict[tuple, list[ScheduledPair]] = {}
    for slot in slots:
        key = how.prompts(slot.task)
        if key not in schedules:
            try:
                schedules[key] = conditioning_schedule(pipe, *key, how.steps(task), task.clip_skip)
            except ConditioningError as e:
                raise RenderError(str(e)) from None
    per_slot = [schedules[how.prompts(slot.task)] for slot in slots]
    family = of_pipeline(pipe)
    if isinstance(family, PartsFamily):
        for slot, schedule in zip(slots, per_slot):
            if len(schedule) > 1 or any(entry.composable for entry in schedule):
                raise RenderError(
                    f"prompt editing ([a:b:N]), alternation ([a|b]) and AND are not supported on {family.name} "
                    f"(prompt: {slot.task.prompt[:60]!r}); they are on SD1.5 and SDXL")
    images: list = [None] * len(slots)
    for call in plan_calls(per_slot):
        for k, image in zip(call, _render_call(pipe, [slots[k] for k in call], [per_slot[k] for k in call], how)):
            images[k] = image
    return images


def plan_calls(schedules: list[list[ScheduledPair]]) -> list[list[int]]:
    """Which images share a pipeline call: images of one prompt always can; images of different
    prompts can when none is composable (`AND`, a weighted part) and all their conditioning
    tensors have one shape (same number of 75-token chunks), because a batch's rows must stack.
    Returns lists of indices into `schedules`."""
    by_prompt: dict[int, list[int]] = {}
    for k, schedule in enumerate(schedules):
        by_prompt.setdefault(id(schedule), []).append(k)
    calls: list[list[int]] = []
    mixable: dict[tuple, list[int]] = {}
    for indices in by_prompt.values():
        schedule = schedules[indices[0]]
        shapes = {(e.positive.embeds.shape, e.negative.embeds.shape) for e in schedule}
        if any(e.composable for e in schedule) or len(shapes) > 1:
            calls.append(indices)
        else:
            mixable.setdefault(shapes.pop(), []).extend(indices)
    return list(mixable.values()) + calls


def _render_call(pipe, slots: list[Slot], schedules: list[list[ScheduledPair]], how: Pass) -> list:
    family = of_pipeline(pipe)
    if isinstance(family, PartsFamily):
        if how is not TXT2IMG:
            raise RenderError(f"task kind '{slots[0].task.kind}' is not supported on {family.name} yet; "
                              "it renders on SD1.5 and SDXL")
        return _render_parts_call(pipe, family, slots, [schedule[0] for schedule in schedules])
    first = [schedule[0] for schedule in schedules]
    kwargs = _embeds(first)
    current = [first[0]]
    if any(len(schedule) > 1 for schedule in schedules):
        callback, inputs = _switcher(schedules, current, family.pooled_step_input)
        kwargs.update(callback_on_step_end=callback, callback_on_step_end_tensor_inputs=inputs)
    # plan_calls gives a composable prompt a call of its own: every image has the same entries
    composable = any(entry.composable for entry in schedules[0])
    guidance = composable_guidance(family.denoiser_of(pipe), current, len(slots)) if composable else nullcontext()

    with torch.inference_mode(), guidance, full_mask(pipe):  # an inpainting UNet's extra input
        return how.call(pipe, slots, kwargs)


def _render_parts_call(pipe, family: PartsFamily, slots: list[Slot], entries: list[ScheduledPair]) -> list[Image.Image]:
    """A family built from parts (Flux, SD3.5, Z-Image ...): its own conditioning and guidance
    arguments; flow-matching Euler (deterministic: no per-step noise)."""
    task = slots[0].task
    pipe.scheduler = flow_scheduler(pipe.seedfarm_scheduler_config, task.schedule, task.shift)
    kwargs = family.pipeline_inputs(pipe, task, [e.positive for e in entries], [e.negative for e in entries])
    latents = family.pack_latents(pipe, initial_latents(pipe, slots))
    with torch.inference_mode():
        result = pipe(
            **kwargs,
            num_images_per_prompt=1,
            num_inference_steps=task.steps,
            width=task.width,
            height=task.height,
            latents=latents,
            output_type="np",
        )
    return to_images(result.images, task)


def to_images(images, task: RenderTask) -> list[Image.Image]:
    """float (n, h, w, 3) in [0, 1] -> PIL images; RenderError on NaN."""
    images = np.asarray(images)
    if np.isnan(images).any():
        raise RenderError(
            f"the render produced NaN pixels (sampler {task.sampler}, schedule {task.schedule}, "
            f"{task.steps} steps); try another sampler or fp32"
        )
    return [Image.fromarray((img * 255).round().astype("uint8")) for img in images]
