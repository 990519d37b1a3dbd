"""A1111's refiner (v1.10): an SDXL refiner checkpoint takes over the same sampling once a
fraction `refiner_switch_at` of it is done.

A1111 checks before each model call how far sampling is, from the current sigma: the nearest of
the model's 1000 training sigmas is timestep t, and (999 - t) / 1000 is the fraction done (a
sampler without sigmas gives t itself). From the first call where that fraction reaches
`refiner_switch_at`, the refiner's UNet denoises, with the refiner's own conditioning (its one
text encoder, OpenCLIP bigG; the size, crop and an aesthetic score of 6 for the prompt, 2.5 for the
negative prompt: A1111's and diffusers' defaults), and the sampler goes on where it was (same
schedule, same history, same per-step noise). A fraction of 1 is never reached: no refiner.
After sampling, the refiner's VAE decodes (A1111 decodes with the model loaded last), unless the
task names a VAE.

Here the switch happens in one diffusers call: the pipeline's step-end callback swaps the UNet and
hands over the refiner's conditioning (diffusers lets the callback replace `prompt_embeds`,
`add_text_embeds` and `add_time_ids`), so an image in a batch is the image rendered alone, as for
txt2img. Prompt editing goes on with the refiner's encoder. Not supported with a refiner: composable
prompts (AND), a switch before the first step, hires fix (refused in the spec too), LoRAs and
embeddings on the refiner itself (they apply to the base model only).
"""

from __future__ import annotations

import torch

from worker import render as diffusion
from worker.conditioning import ConditioningError, ScheduledPair, conditioning_schedule, entry_at
from worker.samplers import make_scheduler

AESTHETIC_SCORE = 6.0  # A1111's sdxl_refiner_high_aesthetic_score (the prompt)
NEGATIVE_AESTHETIC_SCORE = 2.5  # ... low_aesthetic_score (the negative prompt)


def render(pipe, slots: list[diffusion.Slot]) -> list:
    refiner = getattr(pipe, "seedfarm_refiner", None)
    if refiner is None:  # the worker loads it with the checkpoint (worker/prepare.py)
        raise diffusion.RenderError(f"refiner '{slots[0].task.refiner}' is not loaded with this checkpoint")

    def call(pipe, call_slots, kwargs):
        return refined_call(pipe, refiner, call_slots, kwargs)

    return diffusion.render_batch(pipe, slots, diffusion.Pass(call))


def fraction_done(scheduler, step: int) -> float:
    """A1111's fraction of sampling done at loop step `step` of a scheduler whose timesteps are set."""
    sigmas = getattr(scheduler, "sigmas", None)
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if sigmas is not None and alphas is not None and len(sigmas) > step:
        training = ((1 - alphas) / alphas) ** 0.5
        t = int(torch.argmin((training - float(sigmas[step])).abs()))
    else:
        t = int(scheduler.timesteps[step])
    return (999 - t) / 1000


def switch_step(scheduler, steps: int, switch_at: float) -> int | None:
    """The loop step at which the refiner takes over (None: never), for `steps` sampling steps."""
    scheduler.set_timesteps(steps)
    for step in range(len(scheduler.timesteps)):
        if fraction_done(scheduler, step) >= switch_at:
            return step
    return None


def refined_call(pipe, refiner, slots: list[diffusion.Slot], kwargs: dict) -> list:
    """txt2img's call (worker.render.txt2img_call) with the refiner taking over at its step."""
    task = slots[0].task
    scheduler = make_scheduler(pipe.scheduler.config, task.sampler, task.schedule, seeds=[s.seed for s in slots],
                               eta=task.eta)
    at = switch_step(scheduler, task.steps, task.refiner_switch_at)
    if at is None:  # a switch the schedule never reaches: the base model alone (as A1111)
        return diffusion.txt2img_call(pipe, slots, kwargs)
    if at == 0:
        raise diffusion.RenderError(
            f"refiner_switch_at {task.refiner_switch_at:g}: the refiner would take over before the first step of "
            f"{task.sampler} {task.schedule} ({task.steps} steps); give a later switch")
    schedules = _schedules(refiner, slots, task.steps)
    base_step_end = kwargs.pop("callback_on_step_end", None)  # the base's prompt editing
    kwargs.pop("callback_on_step_end_tensor_inputs", None)
    time_ids = _time_ids(task.width, task.height)
    own_unet, own_vae = pipe.unet, pipe.vae

    def on_step_end(p, i, t, tensors):
        step = i + 1
        if step < at:
            return base_step_end(p, i, t, tensors) if base_step_end else {}
        entries = [entry_at(s, step) for s in schedules]
        if step > at and all(e is entry_at(s, step - 1) for e, s in zip(entries, schedules)):
            return {}
        if step == at:
            p.unet = refiner.unet
            if not task.vae:  # A1111 decodes with the refiner's VAE, unless one is chosen
                p.vae = refiner.vae
        guided = p.do_classifier_free_guidance

        def layout(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
            return torch.cat([negative, positive]) if guided else positive

        def rows(what: str) -> tuple[torch.Tensor, torch.Tensor]:
            return (torch.cat([getattr(e.positive, what) for e in entries]),
                    torch.cat([getattr(e.negative, what) for e in entries]))

        n = len(entries)
        return {"prompt_embeds": layout(*rows("embeds")).to(tensors["prompt_embeds"]),
                "add_text_embeds": layout(*rows("pooled")).to(tensors["add_text_embeds"]),
                "add_time_ids": layout(time_ids[0].repeat(n, 1), time_ids[1].repeat(n, 1)).to(tensors["add_time_ids"])}

    kwargs.update(callback_on_step_end=on_step_end,
                  callback_on_step_end_tensor_inputs=["prompt_embeds", "add_text_embeds", "add_time_ids"])
    try:
        return diffusion.txt2img_call(pipe, slots, kwargs)
    finally:
        pipe.unet, pipe.vae = own_unet, own_vae


def _schedules(refiner, slots: list[diffusion.Slot], steps: int) -> list[list[ScheduledPair]]:
    """The refiner's conditioning schedule of each slot (one per prompt pair)."""
    by_prompts: dict[tuple, list[ScheduledPair]] = {}
    for slot in slots:
        key = (slot.task.prompt, slot.task.negative_prompt)
        if key not in by_prompts:
            try:
                by_prompts[key] = conditioning_schedule(refiner, *key, steps, slot.task.clip_skip)
            except ConditioningError as e:
                raise diffusion.RenderError(f"refiner: {e}") from None
            if any(entry.composable for entry in by_prompts[key]):
                raise diffusion.RenderError("composable prompts (AND, or a weighted prompt 'a:1.5') are not "
                                            "supported with a refiner")
    return [by_prompts[(s.task.prompt, s.task.negative_prompt)] for s in slots]


def _time_ids(width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) refiner time ids of one image: original size (h, w), crop (0, 0), score."""
    positive = torch.tensor([[height, width, 0, 0, AESTHETIC_SCORE]])
    negative = torch.tensor([[height, width, 0, 0, NEGATIVE_AESTHETIC_SCORE]])
    return positive, negative
