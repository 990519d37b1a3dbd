"""The render parameters: one row per parameter, the only list of them.

A row says, for one parameter: its spec key and aliases, how the spec parser reads its value, its
default in a spec, the RenderTask fields it decides, whether those are in the task id (fields added
after v1 stay out of it while at their default, so the ids of older tasks do not change), whether
it is in the batch key, how it is written to and read from A1111's infotext, its grid label, and
how the star export writes it. The spec parser, the expansion, the batch key, the infotext, `farm
info --as-spec`, the star export and the grid labels read this table.

Adding a parameter is a row here plus its use in the worker (see docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from farm.hires import DEFAULT_DENOISING, DEFAULT_UPSCALER, is_model_upscaler, upscaler_name
from farm.img2img import IMG2IMG_DENOISING, JUST_RESIZE
from farm.upscale import DEFAULT_UPSCALE_BY, MAX_UPSCALE_BY, UPSCALE_KEYS
from farm.upscale import DEFAULT_UPSCALER as UPSCALE_DEFAULT_UPSCALER
from farm.upscale import output_size as upscale_output_size
from farm.inpaint import (DEFAULT_FILL, DEFAULT_MASK_BLUR, DEFAULT_PADDING, MAX_MASK_BLUR, MAX_PADDING, ORIGINAL,
                          OUTPAINT_FILL, fill_name, outpaint_sides, outpaint_text)
from farm.samplers import ETA_INFOTEXT_KEYS, USES_ENSD, display_name, effective_eta, flow_sampler, parse_sampler

# A vae/lora axis value meaning "none": the checkpoint's own VAE, no extra LoRA.
NO_MODEL = "None"
# seedfarm's RNG sources by their A1111 infotext names.
RNG_NAMES = {"cpu": "CPU", "nv": "NV"}

ALWAYS = "always"  # in the task id
UNLESS_DEFAULT = "unless default"  # added after v1: in the task id only when not at its default


@dataclass(frozen=True)
class Param:
    key: str  # the spec key, also the axis name
    aliases: tuple[str, ...] = ()  # other spec spellings of the key
    # (parser, value node) -> the axis values; None: the spec parser reads it itself, because it
    # depends on other keys (prompt, prompt_sr, models, size) or is no spec key (kind)
    read: Callable[[Any, Any], Any] | None = None
    needs: tuple[str, str] | None = None  # (other key, error message) when it makes no sense alone
    default: tuple | None = None  # the axis values when a spec leaves the key out (A1111's v1.10)
    in_spec: bool = True  # False: a task field no spec sets (yet)
    fields: tuple[str, ...] = ()  # the RenderTask fields it decides
    id_rule: str = ALWAYS
    in_batch_key: bool = False  # tasks may share a diffusion call only when these fields are equal
    # (the task's axis values, its JobSpec) -> RenderTask fields; None: another row sets its fields
    to_task: Callable[[dict, Any], dict] | None = None
    title: str | None = None  # grid label; None: the key, capitalised
    # the infotext pairs of the image of `task` with `seed` (a None value is left out)
    write_info: Callable[[Any, int], dict] | None = None
    read_info: Callable[[dict, list], dict] | None = None  # (infotext params, notes) -> spec entries
    info_types: tuple[tuple[str, type], ...] = ()  # infotext keys read back as numbers
    # (task as a dict, the image's seed) -> the spec value that renders that image again
    star: Callable[[dict, int], Any] | None = None


def _number(value: float) -> int | float:
    """7.0 -> 7 and 7.5 -> 7.5: what A1111 shows for a number typed in its UI."""
    return int(value) if float(value).is_integer() else float(value)


def _eta_info(task, seed: int) -> dict:
    eta = effective_eta(task.sampler, task.eta)
    if task.eta is None or eta == effective_eta(task.sampler, None):
        return {}
    return {ETA_INFOTEXT_KEYS.get(task.sampler, "Eta"): eta}


def _ensd_info(task, seed: int) -> dict:
    uses = task.ensd and task.sampler in USES_ENSD and effective_eta(task.sampler, task.eta) != 0
    return {"ENSD": task.ensd} if uses else {}


def _eta_from_info(params: dict, notes: list) -> dict:
    for key in ("Eta", "Eta DDIM"):
        if key in params:
            return {"eta": params[key]}
    return {}


def _eta_star(task: dict, seed: int) -> float:
    """The eta an image rendered with, so that stars of samplers with different defaults mix."""
    eta = effective_eta(task["sampler"], task.get("eta"))
    if eta is None:  # a sampler without eta ignores it: any value renders the same
        eta = task.get("eta")
    return 1.0 if eta is None else eta


def _sampler_from_info(params: dict, notes: list) -> dict:
    name, schedule = str(params["Sampler"]), str(params.get("Schedule type", "Automatic"))
    if schedule == "Simple":  # Forge's flow-matching schedule (Flux, SD3.5 ...), no SD1.5 one
        sampler, schedule = flow_sampler(name, schedule, "this model")
        return {"sampler": sampler, "schedule": schedule}
    sampler, schedule = parse_sampler(name, schedule)
    return {"sampler": display_name(sampler, schedule)}


def _rng_from_info(params: dict, notes: list) -> dict:
    rng = str(params.get("RNG", "GPU"))
    if rng == "GPU":  # A1111's default: torch.randn on the GPU; NVIDIA's numbers are reproducible
        notes.append("rendered with A1111's GPU noise: nv reproduces an NVIDIA GPU's")
        return {"rng": "nv"}
    sources = {name: source for source, name in RNG_NAMES.items()}
    if rng not in sources:
        raise ValueError(f"unknown RNG '{rng}' in the infotext; seedfarm has CPU and NV")
    return {"rng": sources[rng]}


def _variation_info(task, seed: int) -> dict:
    if task.subseed is None or not task.subseed_strength:
        return {}
    return {"Variation seed": task.subseed + (seed - task.seed),  # image i: subseed + i
            "Variation seed strength": _number(task.subseed_strength)}


def _prompts_to_task(v: dict, spec) -> dict:
    prompt, negative = v["prompt"], v["negative_prompt"]
    search = spec.prompt_sr_search
    if search is not None:  # A1111's Prompt S/R replaces in both prompts
        prompt, negative = prompt.replace(search, v["prompt_sr"]), negative.replace(search, v["prompt_sr"])
    if v.get("lora", NO_MODEL) != NO_MODEL:  # the lora axis is a tag, as a user would write it
        prompt = f"{prompt} <lora:{v['lora']}:{v.get('lora_weight', 1.0):g}>"
    return {"prompt": prompt, "negative_prompt": negative}


def _vae_to_task(v: dict, spec) -> dict:
    vae = "" if v.get("vae", NO_MODEL) == NO_MODEL else v["vae"]
    if not vae:  # a family built from parts: its VAE file, unless the checkpoint holds one
        part = spec.part_files(v["checkpoint"]).get("vae")
        if part and part[0]:
            return {"vae": part[0], "vae_hash": part[1]}
    return {"vae": vae, "vae_hash": spec.vae_hash(vae) if vae else None}


def _parts_to_task(v: dict, spec) -> dict:
    parts = {role: part for role, part in spec.part_files(v["checkpoint"]).items() if role != "vae"}
    return {"text_encoders": {role: name for role, (name, _) in parts.items()},
            "part_hashes": {role: sha for role, (_, sha) in parts.items() if sha}}


def _modules_info(task, seed: int) -> dict:
    """Forge's `Module 1: ae, Module 2: clip_l, ...`: the VAE and text encoder files a model built
    from parts rendered with (its own when the checkpoint holds them: then none is written)."""
    names = ([task.vae] if task.vae and task.text_encoders else []) + [n for n in task.text_encoders.values() if n]
    return {f"Module {i}": name for i, name in enumerate(names, 1)}


def _modules_from_info(params: dict, notes: list) -> dict:
    names = [str(params[key]) for key in sorted((k for k in params if re.fullmatch(r"Module \d+", k)),
                                                 key=lambda k: int(k.split()[1]))]
    if not names:
        return {}
    # Forge writes the VAE and the text encoders in one list; a VAE file is named so (ae, *vae*)
    vaes = [n for n in names if n.lower() in ("ae", "vae") or "vae" in n.lower() or n.lower().startswith("ae")]
    entries: dict = {"text_encoders": [n for n in names if n not in vaes]}
    if vaes:
        entries["vae"] = vaes[0]
    return entries


def _family_value(key: str):
    """to_task for a number the spec may leave to the checkpoint's family (cfg 1 for Flux ...)."""
    return lambda v, spec: {key: spec.value(key, v)}


def _flow_only(key: str):
    """to_task for a parameter only flow-matching families use (None for SD1.5/SDXL tasks)."""
    return lambda v, spec: {key: spec.value(key, v) if spec.uses(key, v["checkpoint"]) else None}


def _size_to_task(v: dict, spec) -> dict:
    if "size" in v:
        width, height = (int(x) for x in v["size"].split("x"))
    else:
        width, height = v["width"], v["height"]
    return {"width": width, "height": height}


def _sampler_to_task(v: dict, spec) -> dict:
    facts = spec.facts_of(v["checkpoint"])
    if facts is not None and facts.flow:
        sampler, schedule = flow_sampler(spec.value("sampler", v), spec.value("schedule", v), facts.name)
    else:
        sampler, schedule = parse_sampler(spec.value("sampler", v), spec.value("schedule", v))
    return {"sampler": sampler, "schedule": schedule}


def _variation_to_task(v: dict, spec) -> dict:
    strength = float(v.get("variation_strength", 0.0))
    # strength 0: same pixels, so the same id as without a variation seed
    return {"subseed": v.get("variation_seed") if strength else None, "subseed_strength": strength}


def _seed_resize_to_task(v: dict, spec) -> dict:
    width, height = (int(x) for x in v.get("seed_resize_from", "0x0").split("x"))
    return {"seed_resize_width": width, "seed_resize_height": height}


def _seed_resize_info(task, seed: int) -> dict:
    if not (task.seed_resize_width and task.seed_resize_height):
        return {}
    return {"Seed resize from": f"{task.seed_resize_width}x{task.seed_resize_height}"}


def _seed_resize_from_info(params: dict, notes: list) -> dict:
    if "Seed resize from-1" not in params:
        return {}
    return {"seed_resize_from": f"{params['Seed resize from-1']}x{params['Seed resize from-2']}"}


def _variation_from_info(params: dict, notes: list) -> dict:
    if not params.get("Variation seed strength"):
        return {}
    return {"variation_seed": params["Variation seed"], "variation_strength": params["Variation seed strength"]}


# ---- hires fix (farm/hires.py; the kind worker/kinds/hires.py) ------------------------------------
# A spec with any of these keys renders kind "hires"; denoising_strength is the second pass's.
HIRES_KEYS = ("hr_scale", "hr_resize", "hr_upscaler", "hr_steps", "hr_sampler", "hr_schedule", "hr_cfg",
              "hr_prompt", "hr_negative_prompt")


def is_hires(spec) -> bool:
    return any(key in spec.values for key in HIRES_KEYS)


# ---- img2img (farm/inputs.py, farm/img2img.py; the kind worker/kinds/img2img.py) ------------------
# A spec with init_images renders kind "img2img"; denoising_strength is then its strength.


def is_img2img(spec) -> bool:
    return "init_images" in spec.values and not is_upscale(spec)


# ---- upscale (A1111's Extras; farm/upscale.py, the kind worker/kinds/upscale.py) ------------------
# A spec with upscaler, upscale_by or upscale_to upscales its init_images: no checkpoint, no prompt.


def is_upscale(spec) -> bool:
    return any(key in spec.values for key in UPSCALE_KEYS)


def _upscale_to_task(v: dict, spec) -> dict:
    """Every upscale field of a task, and its width and height: the output's."""
    if not is_upscale(spec):
        return {}
    source = spec.input_image("init_images", v["init_images"])
    upscaler = v.get("upscaler", UPSCALE_DEFAULT_UPSCALER)
    out: dict = {"upscaler": upscaler}
    if "upscale_to" in v:
        out["upscale_to_x"], out["upscale_to_y"] = (int(n) for n in v["upscale_to"].split("x"))
    else:
        out["upscale_by"] = float(v.get("upscale_by", DEFAULT_UPSCALE_BY))
    out["width"], out["height"] = upscale_output_size(source.width, source.height, upscaler, out.get("upscale_by", 0),
                                                      out.get("upscale_to_x", 0), out.get("upscale_to_y", 0))
    return out


def _kind_to_task(v: dict, spec) -> dict:
    if is_upscale(spec):
        return {"kind": "upscale"}
    if is_inpaint(spec):
        return {"kind": "inpaint"}
    if is_img2img(spec):
        return {"kind": "img2img"}
    return {"kind": "hires" if is_hires(spec) else "txt2img"}


def _denoising_to_task(v: dict, spec) -> dict:
    if is_img2img(spec):
        return {"denoising_strength": float(v.get("denoising_strength", IMG2IMG_DENOISING))}
    return _hires_to_task(v, spec)


def _denoising_info(task, seed: int) -> dict:
    if task.init_image and task.denoising_strength is not None:  # A1111 writes the strength of every img2img render
        return {"Denoising strength": _number(task.denoising_strength)}
    return _hires_info(task, seed)


def _denoising_from_info(params: dict, notes: list) -> dict:
    entries = _hires_from_info(params, notes)
    if not entries and "Denoising strength" in params:  # an img2img render: its init image is not in the text
        notes.append("an img2img render: give its init image as init_images (the infotext does not name it)")
        entries = {"denoising_strength": params["Denoising strength"]}
    return entries


def _init_image_star(task: dict, seed: int) -> str | None:
    """The init image as its key in the job's store (farm/spec/inputs.py reads such a value there)."""
    from farm.store.layout import input_key

    return input_key(task["job"], task["init_image"]) if task.get("init_image") else None


def _init_image_to_task(v: dict, spec) -> dict:
    return {"init_image": spec.input_image("init_images", v["init_images"]).name} if "init_images" in v else {}


# ---- inpaint and outpaint (farm/inpaint.py, farm/spec/inpaint.py; the kind worker/kinds/inpaint.py) ---
# A spec with a mask or an outpaint renders kind "inpaint" (an img2img of its init images).


def is_inpaint(spec) -> bool:
    return "mask" in spec.inputs or "outpaint" in spec.values


def _inpaint_to_task(v: dict, spec) -> dict:
    """Every inpaint field of a task (one row sets them all, as the hires row does)."""
    if not is_inpaint(spec):
        return {}
    outpaint = outpaint_sides(v["outpaint"]) if "outpaint" in v else (0, 0, 0, 0)
    out = {"mask_blur": int(v.get("mask_blur", DEFAULT_MASK_BLUR)),
           "inpainting_fill": v.get("inpainting_fill", OUTPAINT_FILL if "outpaint" in v else DEFAULT_FILL),
           "inpaint_full_res": bool(v.get("inpaint_full_res", False)),
           "inpaint_full_res_padding": int(v.get("inpaint_full_res_padding", DEFAULT_PADDING)),
           "mask_invert": bool(v.get("mask_invert", False)), "outpaint": outpaint}
    if "mask" in spec.inputs:
        out["mask_image"] = spec.input_image("mask", v["init_images"]).name
    return out


def _inpaint_info(task, seed: int) -> dict:
    """A1111's inpaint keys, in the order it adds them. Outpaint: A1111's script blurs the mask by
    twice its own slider and writes that; `Outpaint` (the sides) is seedfarm's own key."""
    if task.kind != "inpaint":
        return {}
    outpaint = any(task.outpaint)
    info: dict = {"Mask blur": task.mask_blur * 2 if outpaint else task.mask_blur}
    if task.mask_invert:
        info["Mask mode"] = "Inpaint not masked"
    if task.inpaint_full_res:
        info["Inpaint area"] = "Only masked"
        info["Masked area padding"] = task.inpaint_full_res_padding
    if task.inpainting_fill != ORIGINAL:
        info["Masked content"] = task.inpainting_fill
    if outpaint:
        info["Outpaint"] = outpaint_text(task.outpaint)
    return info


def _inpaint_from_info(params: dict, notes: list) -> dict:
    outpaint = "Outpaint" in params
    entries: dict = {}
    if "Mask blur" in params:
        entries["mask_blur"] = params["Mask blur"] // 2 if outpaint else params["Mask blur"]
    if params.get("Mask mode") == "Inpaint not masked":
        entries["mask_invert"] = True
    if params.get("Inpaint area") == "Only masked":
        entries["inpaint_full_res"] = True
        entries["inpaint_full_res_padding"] = params.get("Masked area padding", DEFAULT_PADDING)
    if "Masked content" in params:
        entries["inpainting_fill"] = fill_name(str(params["Masked content"]))
    if outpaint:
        entries["outpaint"] = outpaint_text(outpaint_sides(str(params["Outpaint"])))
        entries.setdefault("inpainting_fill", ORIGINAL)  # the script's default is fill; A1111 leaves original out
    elif entries:
        notes.append("an inpaint render: give its init image and mask as init_images and mask "
                     "(the infotext names neither)")
    return entries


def _hires_to_task(v: dict, spec) -> dict:
    """Every hires field of a task (one row sets them all, as the prompt row sets both prompts)."""
    if not is_hires(spec):
        return {}
    out = {"denoising_strength": float(v.get("denoising_strength", DEFAULT_DENOISING)),
           "hr_upscaler": v.get("hr_upscaler", DEFAULT_UPSCALER), "hr_steps": int(v.get("hr_steps", 0)),
           "hr_cfg": float(v["hr_cfg"]) if "hr_cfg" in v else None,
           "hr_prompt": v.get("hr_prompt", ""), "hr_negative_prompt": v.get("hr_negative_prompt", "")}
    if "hr_resize" in v:
        x, y = (int(n) for n in v["hr_resize"].split("x"))
        out.update(hr_resize_x=x, hr_resize_y=y)
    else:
        out["hr_scale"] = float(v.get("hr_scale", 2.0))
    if "hr_sampler" in v:  # 'DPM++ 2M Karras' names the schedule too; else hr_schedule or the first pass's
        sampler, schedule = parse_sampler(v["hr_sampler"], v.get("hr_schedule"))
        explicit = "hr_schedule" in v or schedule != "Automatic"
        out.update(hr_sampler=sampler, hr_schedule=schedule if explicit else "")
    elif "hr_schedule" in v:
        out["hr_schedule"] = v["hr_schedule"]
    return out


def _upscaler_hash_to_task(v: dict, spec) -> dict:
    name = v.get("upscaler", UPSCALE_DEFAULT_UPSCALER) if is_upscale(spec) else v.get("hr_upscaler") if is_hires(spec) else None
    return {"upscaler_hash": spec.upscaler_hash(name) if name and is_model_upscaler(name) else None}


def _hires_info(task, seed: int) -> dict:
    """A1111's hires keys: written only for a hires task, the optional ones only when they differ."""
    if task.kind != "hires":
        return {}
    info: dict = {"Denoising strength": _number(task.denoising_strength)}
    if task.hr_resize_x or task.hr_resize_y:
        info["Hires resize"] = f"{task.hr_resize_x}x{task.hr_resize_y}"
    else:
        info["Hires upscale"] = _number(task.hr_scale)
    if task.hr_steps:
        info["Hires steps"] = task.hr_steps
    info["Hires upscaler"] = task.hr_upscaler
    if task.hr_sampler and task.hr_sampler != task.sampler:
        info["Hires sampler"] = task.hr_sampler
    if task.hr_schedule and task.hr_schedule != task.schedule:
        info["Hires schedule type"] = task.hr_schedule
    if task.hr_cfg is not None and task.hr_cfg != task.cfg:
        info["Hires CFG Scale"] = _number(task.hr_cfg)
    if task.hr_prompt and task.hr_prompt != task.prompt:
        info["Hires prompt"] = task.hr_prompt
    if task.hr_negative_prompt and task.hr_negative_prompt != task.negative_prompt:
        info["Hires negative prompt"] = task.hr_negative_prompt
    return info


def _hires_from_info(params: dict, notes: list) -> dict:
    if not any(key in params for key in ("Hires upscaler", "Hires upscale", "Hires resize-1")):
        return {}
    # an upscaler model's name is kept as written: the spec parser checks it against the models folder
    entries: dict = {"hr_upscaler": upscaler_name(str(params.get("Hires upscaler", DEFAULT_UPSCALER)), None)}
    if "Denoising strength" in params:
        entries["denoising_strength"] = params["Denoising strength"]
    if "Hires resize-1" in params:
        entries["hr_resize"] = f"{params['Hires resize-1']}x{params['Hires resize-2']}"
    else:
        entries["hr_scale"] = params.get("Hires upscale", 2)
    if params.get("Hires steps"):
        entries["hr_steps"] = params["Hires steps"]
    if "Hires sampler" in params:
        sampler, schedule = parse_sampler(str(params["Hires sampler"]), str(params.get("Hires schedule type",
                                                                                       "Automatic")))
        entries["hr_sampler"] = display_name(sampler, schedule)
    elif "Hires schedule type" in params:
        entries["hr_schedule"] = str(params["Hires schedule type"])
    for key, entry in (("Hires CFG Scale", "hr_cfg"), ("Hires prompt", "hr_prompt"),
                       ("Hires negative prompt", "hr_negative_prompt")):
        if key in params:
            entries[entry] = params[key]
    return entries


# ---- SDXL refiner (worker/refiner.py) ------------------------------------------------------------
DEFAULT_SWITCH_AT = 0.8  # A1111's "Switch at" default


def refines(task) -> bool:
    """Whether the task's refiner takes over (at switch 1 it never does, as in A1111)."""
    return bool(task.refiner) and task.refiner_switch_at < 1


def _refiner_to_task(v: dict, spec) -> dict:
    name = v.get("refiner", NO_MODEL)
    if name == NO_MODEL:
        return {}
    return {"refiner": name, "refiner_hash": spec.refiner_hash(name)}


def _refiner_info(task, seed: int) -> dict:
    """A1111 writes both keys when the refiner took over; at switch 1 it never does."""
    if not refines(task):
        return {}
    short = _short_hash(task.refiner_hash)
    return {"Refiner": f"{task.refiner} [{short}]" if short else task.refiner,
            "Refiner switch at": _number(task.refiner_switch_at)}


def _refiner_from_info(params: dict, notes: list) -> dict:
    if "Refiner" not in params:
        return {}
    name = re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", str(params["Refiner"]))  # A1111's "name [hash]"
    entries: dict = {"refiner": name}
    if "Refiner switch at" in params:
        entries["refiner_switch_at"] = params["Refiner switch at"]
    return entries


def _field(name: str):
    """star for a field exported as it is."""
    return lambda t, s: t.get(name)


def _short_hash(sha256: str | None) -> str | None:
    from farm.hashes import short_hash  # imported when used: the table stays light to import

    return short_hash(sha256)


# Expansion order, outermost first: the most expensive axis to change first, so a worker keeps a
# checkpoint loaded as long as possible; seeds, free to change, innermost (as A1111's X/Y/Z).
# Arguments: read(parser, node); to_task(values, spec); write_info(task, seed); read_info(params,
# notes); star(task record, seed).
PARAMS: tuple[Param, ...] = (
    Param("checkpoint", ("checkpoints",),
          fields=("checkpoint", "checkpoint_hash"), in_batch_key=True, title="Checkpoint",
          to_task=lambda v, spec: {"checkpoint": v["checkpoint"],
                                   "checkpoint_hash": spec.checkpoint_hash(v["checkpoint"])},
          write_info=lambda t, s: {"Model hash": _short_hash(t.checkpoint_hash), "Model": t.checkpoint},
          star=lambda t, s: t["checkpoint"]),
    # the SDXL refiner: a second checkpoint to load, so next to the checkpoint in the order
    Param("refiner", ("refiner_checkpoint",),
          fields=("refiner", "refiner_hash"), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Refiner",
          to_task=_refiner_to_task,
          write_info=_refiner_info, read_info=_refiner_from_info, info_types=(("Refiner switch at", float),),
          star=lambda t, s: t.get("refiner") or NO_MODEL),
    Param("refiner_switch_at", ("switch_at",),
          read=lambda r, n: r.numbers(n, "refiner_switch_at", float, 0.01, 1),
          needs=("refiner", "refiner_switch_at: says when the refiner takes over, and there is none; "
                            "add refiner: NAME"),
          fields=("refiner_switch_at",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Refiner switch at",
          to_task=lambda v, spec: {"refiner_switch_at": float(v.get("refiner_switch_at", DEFAULT_SWITCH_AT))},
          star=lambda t, s: _number(t.get("refiner_switch_at", DEFAULT_SWITCH_AT)) if t.get("refiner") else None),
    Param("vae", ("vaes",),
          fields=("vae", "vae_hash"), id_rule=UNLESS_DEFAULT, in_batch_key=True,
          to_task=_vae_to_task,
          star=lambda t, s: t.get("vae") or NO_MODEL),
    # the lora axis becomes a tag in the prompt (the prompt row), whose tags are in the batch key
    Param("lora", ("loras",)),
    Param("lora_weight", ("lora_weights",),
          read=lambda r, n: r.numbers(n, "lora_weight", float, -10, 10),
          needs=("lora", "lora_weight: sweeps the weight of the 'lora' axis, and there is none; add lora: NAME")),
    Param("size",
          fields=("width", "height"), in_batch_key=True, title="Size",
          to_task=_size_to_task,
          write_info=lambda t, s: {"Size": f"{t.width}x{t.height}"},
          read_info=lambda p, notes: {"size": f"{p['Size-1']}x{p['Size-2']}"},
          star=lambda t, s: f"{t['width']}x{t['height']}"),
    Param("width", fields=("width",), in_batch_key=True),  # instead of size; the size row sets both
    Param("height", fields=("height",), in_batch_key=True),
    Param("sampler", ("samplers",),
          read=lambda r, n: r.samplers(n), default=("DPM++ 2M",),
          fields=("sampler",), in_batch_key=True, title="Sampler",
          to_task=_sampler_to_task,  # with the schedule: 'DPM++ 2M Karras' names both
          write_info=lambda t, s: {"Sampler": t.sampler},
          read_info=_sampler_from_info,
          star=lambda t, s: display_name(t["sampler"], t["schedule"])),
    Param("schedule",
          read=lambda r, n: r.schedules(n), default=("Automatic",),
          fields=("schedule",), in_batch_key=True, title="Schedule type",
          write_info=lambda t, s: {"Schedule type": t.schedule} if t.schedule != "Automatic" else {}),
    Param("steps",
          read=lambda r, n: r.numbers(n, "steps", int, 1, 10_000), default=(20,),
          fields=("steps",), in_batch_key=True, title="Steps",
          to_task=lambda v, spec: {"steps": int(spec.value("steps", v))},
          write_info=lambda t, s: {"Steps": t.steps},
          read_info=lambda p, notes: {"steps": p["Steps"]}, info_types=(("Steps", int),),
          star=lambda t, s: t["steps"]),
    Param("clip_skip",
          read=lambda r, n: r.numbers(n, "clip_skip", int, 1, 12), default=(1,),
          fields=("clip_skip",), in_batch_key=True, title="Clip skip",
          to_task=lambda v, spec: {"clip_skip": v["clip_skip"]},
          write_info=lambda t, s: {"Clip skip": t.clip_skip} if t.clip_skip > 1 else {},
          read_info=lambda p, notes: {"clip_skip": p["Clip skip"]} if p.get("Clip skip", 1) != 1 else {},
          info_types=(("Clip skip", int),),
          star=lambda t, s: t["clip_skip"]),
    Param("cfg", ("cfg_scale",),
          read=lambda r, n: r.numbers(n, "cfg", float, 0, 100), default=(7.0,),
          fields=("cfg",), in_batch_key=True, title="CFG scale",
          to_task=lambda v, spec: {"cfg": float(spec.value("cfg", v))},
          write_info=lambda t, s: {"CFG scale": _number(t.cfg)},
          read_info=lambda p, notes: {"cfg": p.get("CFG scale", 7)}, info_types=(("CFG scale", float),),
          star=lambda t, s: _number(t["cfg"])),
    # Flux's guidance (Forge: "Distilled CFG Scale"); for the families whose row has a default
    Param("distilled_cfg", ("distilled_cfg_scale", "guidance"),
          read=lambda r, n: r.numbers(n, "distilled_cfg", float, 0, 100),
          fields=("distilled_cfg",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Distilled CFG Scale",
          to_task=_flow_only("distilled_cfg"),
          write_info=lambda t, s: {"Distilled CFG Scale": _number(t.distilled_cfg)} if t.distilled_cfg is not None else {},
          read_info=lambda p, notes: {"distilled_cfg": p["Distilled CFG Scale"]} if "Distilled CFG Scale" in p else {},
          info_types=(("Distilled CFG Scale", float),),
          star=lambda t, s: t.get("distilled_cfg")),
    # the flow-matching sigma shift; left out: the model's own
    Param("shift",
          read=lambda r, n: r.numbers(n, "shift", float, 0.01, 100),
          fields=("shift",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Shift",
          to_task=_flow_only("shift"),
          write_info=lambda t, s: {"Shift": _number(t.shift)} if t.shift is not None else {},
          read_info=lambda p, notes: {"shift": p["Shift"]} if "Shift" in p else {},
          info_types=(("Shift", float),),
          star=lambda t, s: t.get("shift")),
    Param("rng",
          read=lambda r, n: r.rng_sources(n),
          fields=("rng",), id_rule=UNLESS_DEFAULT, in_batch_key=True,
          to_task=lambda v, spec: {"rng": v.get("rng", "cpu")},
          # always written: a reader assumes A1111's GPU source when it is missing
          write_info=lambda t, s: {"RNG": RNG_NAMES[t.rng]},
          read_info=_rng_from_info,
          star=lambda t, s: t.get("rng", "cpu")),
    Param("eta",
          read=lambda r, n: r.numbers(n, "eta", float, 0, 1),
          fields=("eta",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Eta",
          to_task=lambda v, spec: {"eta": float(v["eta"]) if "eta" in v else None},
          write_info=_eta_info,
          read_info=_eta_from_info, info_types=(("Eta", float), ("Eta DDIM", float)),
          star=_eta_star),
    Param("ensd",
          read=lambda r, n: r.numbers(n, "ensd", int, 0, 2**32 - 1),
          fields=("ensd",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="ENSD",
          to_task=lambda v, spec: {"ensd": v.get("ensd", 0)},
          write_info=_ensd_info,
          read_info=lambda p, notes: {"ensd": p["ENSD"]} if p.get("ENSD") else {}, info_types=(("ENSD", int),),
          star=lambda t, s: t.get("ensd", 0)),
    Param("resize_mode", read=lambda r, n: r.resize_modes(n),
          needs=("init_images", "resize_mode: is img2img's; add init_images"),
          fields=("resize_mode",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Resize mode",
          to_task=lambda v, spec: {"resize_mode": v.get("resize_mode", JUST_RESIZE)} if is_img2img(spec) else {},
          star=lambda t, s: t.get("resize_mode") or None),
    # the upscale kind over init_images: the upscaler row sets every upscale field (and the size);
    # upscaler is read by the spec parser (an upscaler model's name is checked against the models folder)
    Param("upscaler", ("upscalers",),
          fields=("upscaler",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Upscaler",
          to_task=_upscale_to_task, star=lambda t, s: t.get("upscaler") or None),
    Param("upscale_by", read=lambda r, n: r.numbers(n, "upscale_by", float, 1, MAX_UPSCALE_BY),
          fields=("upscale_by",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Upscale by",
          star=lambda t, s: _number(t["upscale_by"]) if t.get("upscale_by") else None),
    Param("upscale_to", read=lambda r, n: r.sizes(n, "upscale_to"),
          fields=("upscale_to_x", "upscale_to_y"), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Upscale to",
          star=lambda t, s: f"{t['upscale_to_x']}x{t['upscale_to_y']}" if t.get("upscale_to_x") else None),
    # hires fix: the denoising_strength row sets every hires field and writes/reads every hires key;
    # with init_images it is img2img's strength
    Param("denoising_strength", ("denoising",),
          read=lambda r, n: r.numbers(n, "denoising_strength", float, 0.01, 1),
          fields=("denoising_strength",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Denoising strength",
          to_task=_denoising_to_task, write_info=_denoising_info, read_info=_denoising_from_info,
          info_types=(("Denoising strength", float), ("Hires upscale", float), ("Hires steps", int),
                      ("Hires CFG Scale", float), ("Hires resize-1", int), ("Hires resize-2", int)),
          star=lambda t, s: _number(t["denoising_strength"]) if t.get("denoising_strength") else None),
    Param("hr_scale", read=lambda r, n: r.numbers(n, "hr_scale", float, 1, 8),
          fields=("hr_scale",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Hires upscale",
          star=lambda t, s: _number(t.get("hr_scale", 2.0))),
    Param("hr_resize", read=lambda r, n: r.sizes(n, "hr_resize"),
          fields=("hr_resize_x", "hr_resize_y"), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Hires resize",
          star=lambda t, s: f"{t.get('hr_resize_x', 0)}x{t.get('hr_resize_y', 0)}"),
    # read by the spec parser: an upscaler model's name is checked against the models folder
    Param("hr_upscaler",
          fields=("hr_upscaler",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Hires upscaler",
          star=_field("hr_upscaler")),
    # not an axis: the sha256 of the upscaler model file a task runs (hr_upscaler: 4x-UltraSharp)
    Param("upscaler_hash", in_spec=False, fields=("upscaler_hash",), id_rule=UNLESS_DEFAULT, in_batch_key=True,
          to_task=_upscaler_hash_to_task),
    Param("hr_steps", read=lambda r, n: r.numbers(n, "hr_steps", int, 0, 10_000),
          fields=("hr_steps",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Hires steps",
          star=_field("hr_steps")),
    Param("hr_sampler", read=lambda r, n: r.samplers(n, "hr_sampler"),
          fields=("hr_sampler",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Hires sampler",
          star=lambda t, s: display_name(t["hr_sampler"], t.get("hr_schedule") or "Automatic")
          if t.get("hr_sampler") else None),
    Param("hr_schedule", read=lambda r, n: r.schedules(n, "hr_schedule"),
          fields=("hr_schedule",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Hires schedule type",
          star=lambda t, s: t.get("hr_schedule") if t.get("hr_schedule") and not t.get("hr_sampler") else None),
    Param("hr_cfg", read=lambda r, n: r.numbers(n, "hr_cfg", float, 0, 100),
          fields=("hr_cfg",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Hires CFG Scale",
          star=lambda t, s: _number(t["hr_cfg"]) if t.get("hr_cfg") is not None else None),
    Param("hr_prompt", read=lambda r, n: [t for t, _ in r.texts(n, "hr_prompt", "the hires prompt text")],
          fields=("hr_prompt",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Hires prompt",
          star=_field("hr_prompt")),
    Param("hr_negative_prompt",
          read=lambda r, n: [t for t, _ in r.texts(n, "hr_negative_prompt", "the hires negative prompt text")],
          fields=("hr_negative_prompt",), id_rule=UNLESS_DEFAULT, in_batch_key=True,
          title="Hires negative prompt", star=_field("hr_negative_prompt")),
    # inpaint and outpaint: the mask row sets every inpaint field and writes/reads every inpaint key;
    # the mask itself is no axis (it goes with its init image: farm/spec/inpaint.py)
    Param("mask", in_spec=False, fields=("mask_image",), id_rule=UNLESS_DEFAULT, title="Mask",
          to_task=_inpaint_to_task, write_info=_inpaint_info, read_info=_inpaint_from_info,
          info_types=(("Mask blur", int), ("Masked area padding", int))),
    Param("outpaint", read=lambda r, n: r.outpaints(n),
          needs=("init_images", "outpaint: pads an init image; add init_images"),
          fields=("outpaint",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Outpaint",
          star=lambda t, s: outpaint_text(t["outpaint"]) if any(t.get("outpaint") or ()) else None),
    Param("mask_blur", read=lambda r, n: r.numbers(n, "mask_blur", int, 0, MAX_MASK_BLUR),
          fields=("mask_blur",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Mask blur",
          star=lambda t, s: t.get("mask_blur", DEFAULT_MASK_BLUR) if t.get("kind") == "inpaint" else None),
    Param("inpainting_fill", ("masked_content",), read=lambda r, n: r.fills(n),
          fields=("inpainting_fill",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Masked content",
          star=lambda t, s: t.get("inpainting_fill") if t.get("kind") == "inpaint" else None),
    Param("inpaint_full_res", ("only_masked",), read=lambda r, n: r.flags(n, "inpaint_full_res"),
          fields=("inpaint_full_res",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Only masked",
          star=_field("inpaint_full_res")),
    Param("inpaint_full_res_padding", read=lambda r, n: r.numbers(n, "inpaint_full_res_padding", int, 0, MAX_PADDING),
          fields=("inpaint_full_res_padding",), id_rule=UNLESS_DEFAULT, in_batch_key=True,
          title="Masked area padding", star=_field("inpaint_full_res_padding")),
    Param("mask_invert", read=lambda r, n: r.flags(n, "mask_invert"),
          fields=("mask_invert",), id_rule=UNLESS_DEFAULT, in_batch_key=True, title="Inpaint not masked",
          star=_field("mask_invert")),
    Param("seed_resize_from",
          read=lambda r, n: r.sizes(n, "seed_resize_from"),
          fields=("seed_resize_width", "seed_resize_height"), id_rule=UNLESS_DEFAULT,
          to_task=_seed_resize_to_task,
          write_info=_seed_resize_info,
          read_info=_seed_resize_from_info,
          star=lambda t, s: f"{t.get('seed_resize_width', 0)}x{t.get('seed_resize_height', 0)}"),
    Param("variation_strength", ("subseed_strength",),
          read=lambda r, n: r.numbers(n, "variation_strength", float, 0, 1),
          needs=("variation_seed",
                 "variation_strength: needs a variation_seed to blend towards (A1111's 'Variation seed')"),
          fields=("subseed_strength",), id_rule=UNLESS_DEFAULT,
          to_task=_variation_to_task,  # with the variation seed
          write_info=_variation_info,
          read_info=_variation_from_info,
          info_types=(("Variation seed", int), ("Variation seed strength", float)),
          star=lambda t, s: _number(t.get("subseed_strength", 0))),
    Param("negative_prompt", ("negative", "negative_prompts"),
          default=("",), fields=("negative_prompt",), title="Negative prompt",
          read_info=lambda p, notes: {"negative_prompt": p["Negative prompt"]} if p.get("Negative prompt") else {},
          star=lambda t, s: t["negative_prompt"]),
    # to_task writes both prompts: Prompt S/R replaces in both, the lora axis adds its tag. The
    # prompt's extra-network tags (LoRAs) are in the batch key (farm/batching.py).
    Param("prompt", ("prompts",),
          fields=("prompt",), title="Prompt",
          to_task=_prompts_to_task,
          read_info=lambda p, notes: {"prompt": p["Prompt"]},
          star=lambda t, s: t["prompt"]),
    Param("prompt_sr", title="Prompt S/R"),
    # with strength 0 the variation seed changes nothing (and is left out of the task): the
    # image's seed stands in for it in the star export
    Param("variation_seed", ("subseed",),
          read=lambda r, n: r.numbers(n, "variation_seed", int, 0, 2**64 - 1),
          fields=("subseed",), id_rule=UNLESS_DEFAULT,
          star=lambda t, s: t["subseed"] + (s - t["seed"]) if t.get("subseed_strength") else s),
    # img2img's init image: read by the spec parser itself (files, folders or a job's images;
    # farm/spec/inputs.py); not in the batch key, and inside every axis that is but the seed, so
    # that consecutive tasks of different init images share a diffusion call
    Param("init_images", ("init_image",),
          fields=("init_image",), id_rule=UNLESS_DEFAULT, title="Init image",
          to_task=_init_image_to_task,
          star=_init_image_star),
    Param("seed", ("seeds",),
          read=lambda r, n: r.numbers(n, "seed", int, 0, 2**64 - 1),
          fields=("seed",), title="Seed",
          to_task=lambda v, spec: {"seed": v["seed"]},
          write_info=lambda t, s: {"Seed": s},
          read_info=lambda p, notes: {"seed": p["Seed"]}, info_types=(("Seed", int),),
          star=lambda t, s: s),
    # not an axis: the text encoder files of a family built from parts (the spec key
    # text_encoders, else the family's defaults in the models folder; farm/parts.py)
    Param("text_encoders", in_spec=False, fields=("text_encoders", "part_hashes"), id_rule=UNLESS_DEFAULT,
          in_batch_key=True, to_task=_parts_to_task,
          write_info=_modules_info, read_info=_modules_from_info),
    # not an axis: the models the spec gives by URL and sha256, so a worker that lacks one fetches it
    # (worker/model_cache.py); every task of the job carries them all (a few per job)
    Param("model_urls", in_spec=False, fields=("model_urls",), id_rule=UNLESS_DEFAULT,
          to_task=lambda v, spec: {"model_urls": dict(spec.links)}),
    # not an axis: the job's LoRAs and embeddings by sha256, so a worker never uses a same-named file
    # with other weights (worker/prepare.py); out of the task id (farm/task.py _NOT_IN_ID)
    Param("lora_hashes", in_spec=False, fields=("lora_hashes", "embedding_hashes"), in_batch_key=True,
          to_task=lambda v, spec: {"lora_hashes": spec.model_pins("lora"),
                                   "embedding_hashes": spec.model_pins("embedding")}),
    # not an axis: one value per job (the spec key batch_size)
    Param("batch_size", in_spec=False, fields=("batch_size",), in_batch_key=True,
          to_task=lambda v, spec: {"batch_size": spec.batch_size}),
    # the task kind the worker dispatches on (worker/kinds/), chosen by the spec's keys: no spec key
    Param("kind", in_spec=False, fields=("kind",), id_rule=UNLESS_DEFAULT, in_batch_key=True,
          to_task=_kind_to_task),
)
BY_KEY = {p.key: p for p in PARAMS}
AXIS_ORDER = tuple(p.key for p in PARAMS if p.in_spec)
ALIASES = {alias: p.key for p in PARAMS for alias in p.aliases}
DEFAULTS: dict[str, list] = {p.key: list(p.default) for p in PARAMS if p.default is not None}
# RenderTask fields that were added after v1 tasks were queued: left out of the id while at their
# default, so the id of a task that does not use them is what it was before they existed.
IN_ID_UNLESS_DEFAULT = frozenset(f for p in PARAMS if p.id_rule == UNLESS_DEFAULT for f in p.fields)
BATCH_FIELDS = tuple(dict.fromkeys(f for p in PARAMS if p.in_batch_key for f in p.fields))
INFOTEXT_TYPES = {key: kind for p in PARAMS for key, kind in p.info_types}
# The star export writes these only when some starred image uses them (each is optional in a spec).
OPTIONAL_AXES = tuple(p.key for p in PARAMS if p.in_spec and p.id_rule == UNLESS_DEFAULT)

# Grid labels of axes derived from the prompt in a prompt-matrix job.
DERIVED_TITLES = {"matrix_x": "Prompt matrix", "matrix_y": "Prompt matrix"}


def axis_title(axis: str) -> str:
    """The grid label of an axis: 'CFG scale' for cfg; an axis without one reads as its key."""
    param = BY_KEY.get(axis)
    title = param.title if param else DERIVED_TITLES.get(axis)
    return title or axis.replace("_", " ").capitalize()


# Filename tokens, A1111-style: token -> its text for (task, seed).
FILENAME_TOKENS: dict[str, Callable[[Any, int], object]] = {
    "seed": lambda t, s: s,
    "steps": lambda t, s: t.steps,
    "cfg": lambda t, s: f"{t.cfg:g}",
    "width": lambda t, s: t.width,
    "height": lambda t, s: t.height,
    "sampler": lambda t, s: display_name(t.sampler, t.schedule),
    "model_name": lambda t, s: t.checkpoint,
    "model_hash": lambda t, s: (t.checkpoint_hash or "")[:10],
    "prompt_hash": lambda t, s: hashlib.sha256(t.prompt.encode()).hexdigest()[:8],
    "prompt_words": lambda t, s: " ".join(re.findall(r"\w+", t.prompt)[:8]),
    "task_id": lambda t, s: t.id,
    "clip_skip": lambda t, s: t.clip_skip,
}


def filename_token(name: str) -> Callable[[Any, int], object] | None:
    """The function giving a filename token's text for (task, seed), or None for an unknown token."""
    return FILENAME_TOKENS.get(name)


def infotext_parameters(task, seed: int) -> dict[str, object]:
    """Every parameter's infotext pairs for the image of `task` with `seed`, in table order."""
    params: dict[str, object] = {}
    for param in PARAMS:
        if param.write_info:
            params.update(param.write_info(task, seed))
    return params


def spec_entries_from_infotext(params: dict, notes: list[str]) -> dict[str, object]:
    """Spec key -> value for every parameter the infotext `params` gives (its prompts under the
    keys 'Prompt' and 'Negative prompt'); notes for the reader are appended to `notes`.
    Raises ValueError for a value seedfarm cannot render."""
    entries: dict[str, object] = {}
    for param in PARAMS:
        if param.read_info:
            entries.update(param.read_info(params, notes))
    return entries


def star_values(task: dict, seed: int) -> dict[str, object]:
    """Spec key -> value that renders the image with `seed` of this task (a task record) again."""
    return {p.key: p.star(task, seed) for p in PARAMS if p.star}


def at_default(param: Param, task: dict) -> bool:
    """Whether a task record leaves this parameter at its default (records from before a field
    existed lack it: that is its default too)."""
    from farm.task import RenderTask

    fields = RenderTask.model_fields

    def plain(value):  # a record's JSON has lists where the model's defaults are tuples (outpaint)
        return tuple(value) if isinstance(value, list) else value

    return all(plain(task.get(f, fields[f].default)) == plain(fields[f].default) for f in param.fields)
