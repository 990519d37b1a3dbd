"""An image's infotext -> a job spec that renders it again (A1111's "Send to txt2img").

Works for seedfarm's images and A1111's: the checkpoint is found by its `Model hash` in the local
models folder (so a renamed file is still found), else by its `Model` name. Every other parameter
is read back by its row in farm/params.py.
"""

from __future__ import annotations

from pathlib import Path

from farm.infotext import parse_infotext
from farm.params import spec_entries_from_infotext
from farm.spec.write import write_spec


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


def _lora_notes(params: dict, models_dir: Path | None) -> list[str]:
    """A note for each LoRA of `Lora hashes` whose file by that name in the models folder has
    another A1111 hash: the tag would apply other weights (a job pins the folder's file)."""
    from farm.model_files import ModelFileError
    from farm.models import Registry, lora_hash

    if models_dir is None or not models_dir.is_dir() or not isinstance(params.get("Lora hashes"), str):
        return []
    notes = []
    for item in params["Lora hashes"].split(","):
        name, _, short = (part.strip() for part in item.rpartition(":"))
        try:
            path = Registry(models_dir).resolve("lora", name).path
        except (ModelFileError, ValueError):
            continue  # not here: the spec check says so
        if short and not lora_hash(path).startswith(short):
            notes.append(f"LoRA '{name}' at {path} has hash {lora_hash(path)[:12]}, the image used {short}: "
                         "a re-render with it differs")
    return notes


def spec_from_infotext(text: str, models_dir: Path | None = None) -> str:
    """A job spec YAML that renders the image described by `text` again."""
    prompt, negative, params = parse_infotext(text)
    for key in ("Steps", "Sampler", "Seed", "Size-1"):
        if key not in params:
            raise RecreateError(f"the infotext has no '{key.removesuffix('-1')}', so it does not describe a render")
    notes: list[str] = []
    try:
        entries = spec_entries_from_infotext({**params, "Prompt": prompt, "Negative prompt": negative}, notes)
    except ValueError as e:
        raise RecreateError(str(e)) from None
    checkpoint, note = _checkpoint(params, models_dir)
    notes = ([note] if note else []) + _lora_notes(params, models_dir) + notes
    return write_spec({"version": 1, "checkpoint": checkpoint, **entries}, [f"note: {n}" for n in notes])
