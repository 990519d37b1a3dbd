"""Models-folder checks of a spec: checkpoint, VAE and LoRA names resolve to files. (Each
checkpoint's family, which gives the default size when a spec gives none: farm/families.py.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from yaml.nodes import Node, SequenceNode

from farm.checkpoints import resolve_checkpoint
from farm.families import UNKNOWN, checkpoint_family
from farm.models import ModelFileError, Registry
from farm.prompts import extract_extra_networks, lora_refs
from farm.params import NO_MODEL
from farm.spec.nodes import NodeReader

REFINER_FAMILY = "SDXL refiner"  # the one family a refiner may be (farm/families.py)

def _tag_offset(value: Any, name: str) -> int | None:
    """Where the tag naming a LoRA starts in a prompt value, for the error's column; None when
    the value does not hold it as written (prompt_sr made it)."""
    m = re.search(r"<\w+:\s*" + re.escape(name) + r"\s*[:>]", value) if isinstance(value, str) else None
    return m.start() if m else None


class ModelChecks(NodeReader):
    """Checks model names against the models folder, when one is given."""

    def checkpoints(self, node: Node, models_dir: Path | None) -> tuple[list[str], dict[str, Path]]:
        names, files = [], {}
        for text, item in self.texts(node, "checkpoint", "a checkpoint name (file stem)", split=True):
            name = text.removesuffix(".safetensors").removesuffix(".ckpt")
            if models_dir is not None:
                try:
                    files[name] = resolve_checkpoint(name, models_dir)
                except ValueError as e:
                    # A hub id (org/name) in no models folder is the worker's to fetch: it has no
                    # file here to hash (its tasks carry no hash) nor to read the family from.
                    if not Registry(models_dir).is_hub_id(name):
                        raise self.error(item, str(e)) from None
            names.append(name)
        self.unique(names, node, "checkpoint")
        return names, files

    def lora_tags(self, f: dict, models_dir: Path) -> None:
        """Every `<lora:NAME...>` (and `<lyco:...>`) a render will apply must resolve in the models
        folder, or the job fails here instead of task by task at render time. The tags come from
        the prompt values (a matrix prompt's parts included) and from the prompts as prompt_sr
        rewrites them (a replacement may be, or change, a LoRA name). Negative prompts' tags are
        not applied (A1111), so not checked. Names are resolved as the worker does."""
        registry = Registry(models_dir)
        files = registry.files("lora")  # one scan; resolve() only for names not found by name
        problems: dict[str, str | None] = {}  # name -> why it does not resolve (None: it does)

        def check(text: str, node: Node, where: str = "") -> None:
            try:
                refs = lora_refs(extract_extra_networks(text)[1])
            except ValueError as e:  # a weight that is no number
                raise self.error(node, f"prompt: {e}") from None
            for ref in refs:
                if ref.name not in problems:
                    problems[ref.name] = None
                    if ref.name not in files:
                        try:
                            registry.resolve("lora", ref.name, label="LoRA")
                        except ModelFileError as e:
                            problems[ref.name] = str(e)
                if problems[ref.name]:
                    raise self.error(node, problems[ref.name] + where, _tag_offset(self.plain(node), ref.name))

        prompts = self.texts(f["prompt"][1], "prompt", "the prompt text")
        for text, node in prompts:
            check(text, node)
        if "prompt_sr" in f:
            sr = f["prompt_sr"][1]
            values = self.texts(sr, "prompt_sr", "text", split=not isinstance(sr, SequenceNode))
            search = values[0][0]
            for value, node in values[1:]:
                for text, _ in prompts:
                    replaced = text.replace(search, value)
                    if replaced != text:
                        check(replaced, node, f" (in the prompt prompt_sr makes with '{value}')")

    def model_names(self, node: Node, kind: str, models_dir: Path | None) -> tuple[list[str], dict[str, Path]]:
        """A vae or lora axis: file stems (or None), checked against the models folder if given."""
        names, files = [], {}
        for text, item in self.texts(node, kind, f"a {kind} name (file stem) or {NO_MODEL}", split=True):
            name = NO_MODEL if text.lower() in ("none", "automatic") else re.sub(r"\.(safetensors|ckpt|pt)$", "", text)
            if models_dir is not None and name != NO_MODEL:
                try:
                    files[name] = Registry(models_dir).resolve(kind, name).path
                except ValueError as e:
                    raise self.error(item, str(e)) from None
            names.append(name)
        self.unique(names, node, kind)
        return names, files

    def refiners(self, node: Node, models_dir: Path | None) -> tuple[list[str], dict[str, Path]]:
        """The refiner axis: checkpoint names (or None), each an SDXL refiner file when the models
        folder is at hand (worker/refiner.py renders only those)."""
        names, files = [], {}
        for text, item in self.texts(node, "refiner", f"a refiner checkpoint name (file stem) or {NO_MODEL}",
                                     split=True):
            name = NO_MODEL if text.lower() == "none" else text.removesuffix(".safetensors").removesuffix(".ckpt")
            if models_dir is not None and name != NO_MODEL:
                try:
                    files[name] = resolve_checkpoint(name, models_dir)
                except ValueError as e:
                    raise self.error(item, f"refiner: {e}") from None
                found = checkpoint_family(name, files, {})
                if found not in (REFINER_FAMILY, UNKNOWN):
                    raise self.error(item, f"refiner: '{name}' is a checkpoint of {found}, not an SDXL refiner; "
                                     "seedfarm refines SDXL renders with SDXL refiner checkpoints "
                                     "(sd_xl_refiner_1.0 and its fine-tunes)")
            names.append(name)
        self.unique(names, node, "refiner")
        return names, files
