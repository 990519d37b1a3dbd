"""A1111 sampler + schedule type -> a diffusers scheduler (diffusers.md section 4).

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

from farm.samplers import AUTOMATIC_SCHEDULE, SAMPLERS

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
    base_config: Mapping[str, Any], sampler: str, schedule: str = "Automatic", seeds: list[int] | None = None
):
    """A fresh diffusers scheduler for this A1111 sampler/schedule, keeping the model's training
    config (betas, prediction type, steps offset) from `base_config` (e.g. pipe.scheduler.config).
    `seeds` (one per image) seed the Brownian tree of DPM++ SDE, one tree per image as A1111 does,
    so reruns are identical and an image does not depend on its batch."""
    import diffusers

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
    return cls.from_config({**base, **kwargs})
