"""A1111 sampler + schedule type (+ eta) -> a diffusers scheduler.

Names come from farm.samplers (the contract); this module only knows how to build each one.
Numerical parity with A1111 is not expected (different sigma discretisation and noise), but the
choices below follow A1111 where diffusers allows:
- "Uniform" on a k-diffusion sampler is A1111's default discretisation: timesteps evenly spaced from
  999 down to 0, which is diffusers' timestep_spacing="linspace". On DDIM/PLMS it is A1111's
  "uniform" ddim discretisation (range(0, 1000, 1000 // steps) + 1), i.e. "leading" + steps_offset 1.
- "Automatic" is the sampler's A1111 default (farm.samplers.AUTOMATIC_SCHEDULE), else "Uniform".
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from farm.samplers import AUTOMATIC_SCHEDULE, ETA_DEFAULTS, ETA_SAMPLERS, SAMPLERS, effective_eta, eta_problem

# sampler -> (diffusers class name, fixed kwargs). Classes are looked up lazily (import cost).
_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    # k-diffusion's Brownian-tree DPM++ SDE; needs torchsde. Its noise is seeded per image
    # (noise_sampler_seed, set by make_scheduler), not from the generators.
    "DPM++ SDE": ("DPMSolverSDEScheduler", {}),
    # Plain randn noise from the generator: no torchsde needed.
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "DPM++ 2M SDE Heun": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"},
    ),
    "DPM++ 3M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    "LCM": ("LCMScheduler", {}),
    "DDIM": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    # A1111 defaults: variant bh1, order 3, lower order final. bh1 with final_sigmas_type="zero"
    # returns NaN latents in diffusers 0.42, so the last step goes to sigma_min instead.
    "UniPC": (
        "UniPCMultistepScheduler",
        {"solver_type": "bh1", "solver_order": 3, "lower_order_final": True, "final_sigmas_type": "sigma_min"},
    ),
}

# Samplers whose "Uniform" is the original LDM/DDIM discretisation rather than k-diffusion's.
_DDIM_STYLE = {"DDIM", "PLMS"}

_SCHEDULE_KWARGS: dict[str, dict[str, Any]] = {
    "Uniform": {"timestep_spacing": "linspace"},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True, "timestep_spacing": "linspace"},
    "Beta": {"use_beta_sigmas": True, "timestep_spacing": "linspace"},
    "SGM Uniform": {"timestep_spacing": "trailing"},
}

# Keys this module decides; dropped from the base config so that building from a config this module
# produced (pipe.scheduler.config of the previous task) gives the same result as from the original.
_CONTROLLED = {
    "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "timestep_spacing",
    "algorithm_type", "solver_type", "solver_order", "lower_order_final", "final_sigmas_type",
    "skip_prk_steps", "clip_sample", "set_alpha_to_one", "noise_sampler_seed",
}


def resolve_schedule(sampler: str, schedule: str) -> str:
    """The concrete schedule type: 'Automatic' becomes the sampler's A1111 default."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler '{sampler}'; valid: " + ", ".join(SAMPLERS))
    if schedule == "Automatic":
        return AUTOMATIC_SCHEDULE.get(sampler, "Uniform")
    if schedule not in SAMPLERS[sampler]:
        raise ValueError(
            f"sampler '{sampler}' has no schedule type '{schedule}'; valid: "
            + ", ".join(("Automatic",) + SAMPLERS[sampler])
        )
    return schedule


def scheduler_kwargs(sampler: str, schedule: str, base_config: Mapping[str, Any] | None = None) -> tuple[str, dict]:
    """(diffusers class name, kwargs on top of the base config) for an A1111 sampler + schedule."""
    concrete = resolve_schedule(sampler, schedule)
    class_name, fixed = _SCHEDULERS[sampler]
    kwargs = dict(fixed)
    if sampler in _DDIM_STYLE:
        steps_offset = (base_config or {}).get("steps_offset", 1)
        kwargs.update(timestep_spacing="leading", steps_offset=steps_offset)
    else:
        kwargs.update(_SCHEDULE_KWARGS[concrete])
    return class_name, kwargs


def make_scheduler(
    base_config: Mapping[str, Any],
    sampler: str,
    schedule: str = "Automatic",
    seeds: list[int] | None = None,
    eta: float | None = None,
):
    """A fresh diffusers scheduler for this A1111 sampler/schedule, keeping the model's training
    config (betas, prediction type, steps offset) from `base_config` (e.g. pipe.scheduler.config).
    `seeds` (one per image) seed the Brownian tree of DPM++ SDE, one tree per image as A1111 does,
    so reruns are identical and an image does not depend on its batch. `eta` (None: the sampler's
    A1111 default) scales the noise ancestral samplers and DDIM add at each step."""
    import diffusers

    eta = effective_eta(sampler, eta)
    if eta is not None and eta != ETA_DEFAULTS[sampler] and sampler not in ETA_SAMPLERS:
        raise ValueError(eta_problem(sampler, eta))

    class_name, kwargs = scheduler_kwargs(sampler, schedule, base_config)
    if class_name == "DPMSolverSDEScheduler":
        try:
            import torchsde  # noqa: F401
        except ImportError:
            raise RuntimeError(f"sampler '{sampler}' needs torchsde: pip install torchsde") from None
        kwargs["noise_sampler_seed"] = list(seeds) if seeds else 0
    if kwargs.get("use_beta_sigmas") or class_name == "LMSDiscreteScheduler":
        try:
            import scipy  # noqa: F401  (diffusers needs it for LMS coefficients and Beta sigmas)
        except ImportError:
            raise RuntimeError(f"sampler '{sampler}' schedule '{schedule}' needs scipy: pip install scipy") from None
    cls = getattr(diffusers, class_name)
    accepted = set(inspect.signature(cls.__init__).parameters)
    unsupported = set(kwargs) - accepted
    if unsupported:  # farm.samplers offers a schedule this diffusers class cannot do
        raise ValueError(f"{class_name} has no {', '.join(sorted(unsupported))} (sampler '{sampler}', schedule '{schedule}')")
    # Only the keys this class takes: from_config warns about every foreign key (PNDM's skip_prk_steps...).
    base = {k: v for k, v in dict(base_config).items() if k in accepted and k not in _CONTROLLED}
    if eta is None or eta == ETA_DEFAULTS[sampler]:
        return cls.from_config({**base, **kwargs})
    scheduler = _with_eta(cls).from_config({**base, **kwargs})
    scheduler.eta = eta
    return scheduler


_ETA_CLASSES: dict[type, type] = {}


def _with_eta(cls: type) -> type:
    """The scheduler class that renders with its instance's `eta` (set after construction: eta is
    a sampling setting, not part of the model's scheduler config). Built only for an eta other
    than the default, so default renders use diffusers' own classes, unchanged."""
    if cls not in _ETA_CLASSES:
        step = _ddim_step_with_eta if cls.__name__ == "DDIMScheduler" else _euler_ancestral_step_with_eta
        _ETA_CLASSES[cls] = type(f"{cls.__name__}WithEta", (cls,), {"eta": 1.0, "step": step})
    return _ETA_CLASSES[cls]


def _ddim_step_with_eta(self, model_output, timestep, sample, eta: float = 0.0, use_clipped_model_output: bool = False,
                        generator=None, variance_noise=None, return_dict: bool = True):
    """DDIM's step with this scheduler's eta in place of the pipeline's (which passes 0.0). The
    signature names `generator`: the pipeline passes the per-image generators only to a step that does."""
    import diffusers

    return diffusers.DDIMScheduler.step(self, model_output, timestep, sample, self.eta, use_clipped_model_output,
                                        generator, variance_noise, return_dict)


def _euler_ancestral_step_with_eta(self, model_output, timestep, sample, generator=None, return_dict: bool = True):
    """Euler a's step with k-diffusion's ancestral step for eta (sample_euler_ancestral and
    get_ancestral_step): the noise added is eta times the full ancestral amount, capped at the next
    sigma, and the deterministic step goes down to what is left. eta 1 is diffusers' own step."""
    import torch
    from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteSchedulerOutput
    from diffusers.utils.torch_utils import randn_tensor

    if self.step_index is None:
        self._init_step_index(timestep)
    sigma_from, sigma_to = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
    sample = sample.to(torch.float32)  # as diffusers: avoids precision issues
    if self.config.prediction_type == "epsilon":
        denoised = sample - sigma_from * model_output
    elif self.config.prediction_type == "v_prediction":
        denoised = model_output * (-sigma_from / (sigma_from**2 + 1) ** 0.5) + (sample / (sigma_from**2 + 1))
    else:
        raise ValueError(f"Euler a with eta has no prediction type '{self.config.prediction_type}'")
    sigma_up = torch.minimum(sigma_to, self.eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    derivative = (sample - denoised) / sigma_from
    prev_sample = sample + derivative * (sigma_down - sigma_from)
    noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device, generator=generator)
    prev_sample = (prev_sample + noise * sigma_up).to(model_output.dtype)
    self._step_index += 1
    if not return_dict:
        return (prev_sample, denoised)
    return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)


# Flow-matching models (Flux, SD3.5, Z-Image ...): one sampler, Euler, with Forge's schedule
# types for it (farm/samplers.py FLOW_SCHEDULES) as FlowMatchEulerDiscreteScheduler's sigma options.
_FLOW_SCHEDULE_KWARGS = {"Simple": {}, "Karras": {"use_karras_sigmas": True}, "Beta": {"use_beta_sigmas": True}}


def flow_scheduler(base_config: Mapping[str, Any], schedule: str, shift: float | None = None):
    """The flow-matching Euler scheduler for a schedule type; `shift` (when given) replaces the
    family's shift and turns off resolution-dependent shifting (Flux.1 [dev]'s). base_config is
    the family's own scheduler config as loaded (never one this function produced)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if schedule not in _FLOW_SCHEDULE_KWARGS:
        raise ValueError(f"schedule type '{schedule}' is not one for flow-matching models; valid: "
                         + ", ".join(_FLOW_SCHEDULE_KWARGS))
    config = dict(base_config)
    config.update(_FLOW_SCHEDULE_KWARGS[schedule])
    if shift is not None:
        config.update(shift=float(shift), use_dynamic_shifting=False)
    return FlowMatchEulerDiscreteScheduler.from_config(config)
