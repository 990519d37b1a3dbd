"""A1111 sampler and schedule-type names (no torch: the coordinator validates specs with these).

The worker maps each (sampler, schedule) pair to a diffusers scheduler in worker/samplers.py.
Old combined names such as "DPM++ 2M Karras" mean the sampler plus that schedule type.
"""

from __future__ import annotations

import difflib

# Samplers seedfarm can render, by A1111 display name. Value: the schedule types it accepts
# besides "Automatic" (diffusers exposes Karras & co. only on some schedulers).
_SIGMA_SCHEDULES = ("Karras", "Exponential", "Beta", "SGM Uniform", "Uniform")
SAMPLERS: dict[str, tuple[str, ...]] = {
    "Euler a": ("Uniform",),
    "Euler": _SIGMA_SCHEDULES,
    "LMS": _SIGMA_SCHEDULES,
    "Heun": _SIGMA_SCHEDULES,
    "DPM2": _SIGMA_SCHEDULES,
    "DPM2 a": _SIGMA_SCHEDULES,
    "DPM++ 2M": _SIGMA_SCHEDULES,
    "DPM++ SDE": _SIGMA_SCHEDULES,
    "DPM++ 2M SDE": _SIGMA_SCHEDULES,
    "DPM++ 2M SDE Heun": _SIGMA_SCHEDULES,
    "DPM++ 3M SDE": _SIGMA_SCHEDULES,
    "DDIM": ("Uniform",),
    "PLMS": ("Uniform",),
    "UniPC": _SIGMA_SCHEDULES,
    "LCM": ("Uniform", "SGM Uniform"),
}
# A1111 samplers diffusers has no equivalent for, named in the error so nobody hunts for them:
# DPM++ 2S a (ancestral singlestep), DPM fast, DPM adaptive, Restart.
NOT_AVAILABLE = ("DPM++ 2S a", "DPM fast", "DPM adaptive", "Restart")

SCHEDULE_TYPES = ("Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform", "Beta", "Simple")
# Flow-matching families (farm/families.py `flow`): Forge offers them Euler with these schedule
# types ("Simple": the model's own sigmas, shifted); other samplers are refused for them.
FLOW_SAMPLERS = ("Euler",)
FLOW_SCHEDULES = ("Simple", "Beta", "Karras")

# A1111's "Automatic" schedule per sampler (the default scheduler of each sampler in A1111's
# modules/sd_samplers_kdiffusion.py); the rest use the scheduler default.
AUTOMATIC_SCHEDULE = {
    "DPM++ 2M": "Karras",
    "DPM++ SDE": "Karras",
    "DPM2": "Karras",
    "DPM2 a": "Karras",
    "DPM++ 2M SDE": "Exponential",
    "DPM++ 2M SDE Heun": "Exponential",
    "DPM++ 3M SDE": "Exponential",
}


# Samplers whose A1111 function takes eta, with A1111's default eta when a render gives none: the
# k-diffusion ones use the setting eta_ancestral (1.0), DDIM eta_ddim (0.0); A1111's infotext names
# it "Eta" and "Eta DDIM" and writes it only when it differs from that default (A1111's
# modules/sd_samplers_common.py, Sampler.initialize, and modules/sd_samplers_timesteps.py).
ETA_DEFAULTS = {
    "Euler a": 1.0, "DPM2 a": 1.0, "DPM++ SDE": 1.0, "DPM++ 2M SDE": 1.0, "DPM++ 2M SDE Heun": 1.0,
    "DPM++ 3M SDE": 1.0, "DDIM": 0.0,
}
ETA_INFOTEXT_KEYS = {"DDIM": "Eta DDIM"}  # the others: "Eta"
# Samplers whose eta seedfarm can change; diffusers fixes the others' at their default.
ETA_SAMPLERS = ("Euler a", "DDIM")
# Samplers whose infotext carries ENSD when it is set and eta is not 0 (A1111's "uses_ensd" option,
# modules/sd_samplers_kdiffusion.py; used by is_sampler_using_eta_noise_seed_delta).
USES_ENSD = ("Euler a", "DPM2 a")


def effective_eta(sampler: str, eta: float | None) -> float | None:
    """The eta a render uses: the given one, else the sampler's A1111 default; None for a sampler
    that takes no eta."""
    if sampler not in ETA_DEFAULTS:
        return None
    return ETA_DEFAULTS[sampler] if eta is None else float(eta)


def eta_problem(sampler: str, eta: float) -> str | None:
    """Why this sampler cannot render with this eta, or None (samplers without eta ignore it, as in A1111)."""
    if sampler in ETA_DEFAULTS and sampler not in ETA_SAMPLERS and eta != ETA_DEFAULTS[sampler]:
        return (f"eta: sampler '{sampler}' renders only with its default eta {ETA_DEFAULTS[sampler]:g} "
                f"(diffusers fixes it); samplers that sweep eta: {', '.join(ETA_SAMPLERS)}")
    return None


def sampler_names() -> list[str]:
    """Every name accepted in a spec: plain names and old "<sampler> <schedule>" names."""
    names = list(SAMPLERS)
    for sampler, schedules in SAMPLERS.items():
        names += [f"{sampler} {s}" for s in schedules if s in ("Karras", "Exponential")]
    return names


def parse_sampler(name: str, schedule: str | None = None) -> tuple[str, str]:
    """'DPM++ 2M Karras' -> ('DPM++ 2M', 'Karras'). Raises ValueError naming the valid choices."""
    text = " ".join(str(name).split())
    lookup = {n.lower(): n for n in SAMPLERS}
    sampler, found_schedule = lookup.get(text.lower()), "Automatic"
    if sampler is None:
        for s in SCHEDULE_TYPES[1:]:
            if text.lower().endswith(" " + s.lower()):
                sampler = lookup.get(text[: -len(s) - 1].lower())
                found_schedule = s
                break
    if sampler is None:
        if text.lower() in (n.lower() for n in NOT_AVAILABLE):
            raise ValueError(f"sampler '{name}' has no diffusers equivalent; valid: " + ", ".join(sampler_names()))
        guess = difflib.get_close_matches(text, sampler_names(), n=1)
        hint = f" (did you mean '{guess[0]}'?)" if guess else ""
        raise ValueError(f"unknown sampler '{name}'{hint}; valid: " + ", ".join(sampler_names()))
    if schedule is not None and schedule != "Automatic":
        if found_schedule != "Automatic" and found_schedule != schedule:
            raise ValueError(f"sampler '{name}' already names schedule {found_schedule}, not {schedule}")
        found_schedule = schedule
    if found_schedule not in ("Automatic",) + SAMPLERS[sampler]:
        raise ValueError(
            f"sampler '{sampler}' has no schedule type '{found_schedule}' here; valid: "
            + ", ".join(("Automatic",) + SAMPLERS[sampler])
        )
    return sampler, found_schedule


def flow_sampler(name: str, schedule: str | None, family: str) -> tuple[str, str]:
    """(sampler, schedule) for a flow-matching family (Forge's choices: Euler with Simple, Beta or
    Karras; "Automatic" is Simple). Raises ValueError naming the valid ones."""
    text = " ".join(str(name).split())
    found = next((s for s in FLOW_SCHEDULES if text.lower().endswith(" " + s.lower())), None)
    sampler = text[: -len(found) - 1] if found else text
    schedule = found or (schedule if schedule not in (None, "Automatic") else "Simple")
    valid = f"valid: {', '.join(FLOW_SAMPLERS)} with schedule types {', '.join(FLOW_SCHEDULES)}"
    if sampler.lower() not in (s.lower() for s in FLOW_SAMPLERS):
        raise ValueError(f"sampler '{name}' cannot render {family} (a flow-matching model); {valid}")
    if schedule not in FLOW_SCHEDULES:
        raise ValueError(f"schedule type '{schedule}' cannot render {family} (a flow-matching model); {valid}")
    return FLOW_SAMPLERS[[s.lower() for s in FLOW_SAMPLERS].index(sampler.lower())], schedule


def display_name(sampler: str, schedule: str) -> str:
    """The name a person reads in labels: 'DPM++ 2M Karras', or just 'Euler a'."""
    return sampler if schedule == "Automatic" else f"{sampler} {schedule}"
