"""An image's infotext -> a job spec that renders it again (A1111's "Send to txt2img").

Works for seedfarm's images and A1111's: the checkpoint is found by its `Model hash` in the local
models folder (so a renamed file is still found), else by its `Model` name.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from farm.infotext import RNG_NAMES, parse_infotext
from farm.samplers import display_name, parse_sampler

_SOURCES = {name: source for source, name in RNG_NAMES.items()}


class RecreateError(ValueError):
    """The infotext cannot become a spec; the message is one line."""


def _checkpoint(params: dict, models_dir: Path | None) -> tuple[str, str | None]:
    """(checkpoint name for the spec, a note for the reader or None)."""
    from farm.checkpoints import find_checkpoints, resolve_checkpoint

    name, short = params.get("Model"), params.get("Model hash")
    if models_dir is not None and models_dir.is_dir():
        for ref in (short, name):
            if not ref:
                continue
            try:
                path = resolve_checkpoint(str(ref), models_dir)
            except ValueError:
                continue
            names = [n for n, p in find_checkpoints(models_dir).items() if p == path]
            return (names[0] if names else path.stem), None
        where = f"not found in {models_dir}"
    else:
        where = "not checked: no models folder"
    if not name:
        raise RecreateError(f"the image names no model (Model hash {short or '-'} {where})")
    return str(name), f"checkpoint '{name}' (hash {short or '-'}) {where}"


def spec_from_infotext(text: str, models_dir: Path | None = None) -> str:
    """A job spec YAML that renders the image described by `text` again."""
    prompt, negative, params = parse_infotext(text)
    for key in ("Steps", "Sampler", "Seed", "Size-1"):
        if key not in params:
            raise RecreateError(f"the infotext has no '{key.removesuffix('-1')}', so it does not describe a render")
    try:
        sampler, schedule = parse_sampler(str(params["Sampler"]), str(params.get("Schedule type", "Automatic")))
    except ValueError as e:
        raise RecreateError(str(e)) from None
    checkpoint, note = _checkpoint(params, models_dir)
    spec: dict = {"version": 1, "prompt": prompt}
    if negative:
        spec["negative_prompt"] = negative
    spec.update(
        checkpoint=checkpoint,
        seed=params["Seed"],
        sampler=display_name(sampler, schedule),
        steps=params["Steps"],
        cfg=params.get("CFG scale", 7),
        size=f"{params['Size-1']}x{params['Size-2']}",
    )
    if params.get("Clip skip", 1) != 1:
        spec["clip_skip"] = params["Clip skip"]
    rng = str(params.get("RNG", "GPU"))
    notes = [note] if note else []
    if rng == "GPU":  # A1111's default: torch.randn on the GPU; NVIDIA's numbers are reproducible
        notes.append("rendered with A1111's GPU noise: nv reproduces an NVIDIA GPU's")
        spec["rng"] = "nv"
    elif rng in _SOURCES:
        spec["rng"] = _SOURCES[rng]
    else:
        raise RecreateError(f"unknown RNG '{rng}' in the infotext; seedfarm has CPU and NV")
    if params.get("Variation seed strength"):
        spec["variation_seed"] = params["Variation seed"]
        spec["variation_strength"] = params["Variation seed strength"]
    if "Seed resize from-1" in params:
        spec["seed_resize_from"] = f"{params['Seed resize from-1']}x{params['Seed resize from-2']}"
    body = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=10**6)
    return "".join(f"# note: {n}\n" for n in notes) + body
