"""Models-folder checks of a spec: checkpoint, VAE and LoRA names resolve to files. (Each
checkpoint's family, which gives the default size when a spec gives none: farm/families.py.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, Node, SequenceNode

from farm.checkpoints import resolve_checkpoint
from farm.depot import SHA256, URL, words_in
from farm.families import UNKNOWN, checkpoint_family
from farm.hires import LATENT_UPSCALERS, is_model_upscaler
from farm.models import SUFFIXES, ModelFileError, Registry
from farm.prompts import extract_extra_networks, lora_refs
from farm.params import NO_MODEL
from farm.spec.nodes import NodeReader, kind as kind_of


def link_pins(links: dict[str, tuple[str, str]]) -> dict[str, str]:
    """The JobSpec hashes (name, 'vae:NAME', 'lora:NAME') of the models a spec gives by URL: their
    pins, as a models folder's files give theirs."""
    pins = {}
    for key, (sha256, _) in links.items():
        model, name = key.split(":", 1)
        if model in ("checkpoint", "vae", "lora"):
            pins[name if model == "checkpoint" else f"{model}:{name}"] = sha256
    return pins

REFINER_FAMILY = "SDXL refiner"  # the one family a refiner may be (farm/families.py)

def _tag_offset(value: Any, name: str) -> int | None:
    """Where the tag naming a LoRA starts in a prompt value, for the error's column; None when
    the value does not hold it as written (prompt_sr made it)."""
    m = re.search(r"<\w+:\s*" + re.escape(name) + r"\s*[:>]", value) if isinstance(value, str) else None
    return m.start() if m else None


class ModelChecks(NodeReader):
    """Checks model names against the models folder, when one is given, and reads models given by
    URL and sha256 instead of by name (`{url: hf://org/repo/file.safetensors, sha256: HEX}`)."""

    @property
    def links(self) -> dict[str, tuple[str, str]]:
        """'kind:name' -> (sha256, URL) of the models this spec gives by URL."""
        return self.__dict__.setdefault("_links", {})

    def named(self, node: Node, kind: str, expect: str) -> list[tuple[str, Node, bool]]:
        """(name, node, given by URL) of a model axis: names as texts() reads them, and models
        given by URL (a mapping, alone or in the list), named by their file's stem."""
        items = node.value if isinstance(node, SequenceNode) else [node]
        if not any(isinstance(item, MappingNode) for item in items):
            return [(text, item, False) for text, item in self.texts(node, kind, expect, split=True)]
        out = []
        for item in items:
            if isinstance(item, MappingNode):
                out.append((self.linked(item, kind), item, True))
            else:
                out += [(text, n, False) for text, n in self.texts(item, kind, expect, split=True)]
        return out

    def linked(self, node: MappingNode, kind: str) -> str:
        """A model given by URL and sha256: pinned here without downloading it (workers fetch it,
        farm/depot.py); its name is the file's stem unless `name:` says."""
        f = self.keys(node, ("url", "sha256", "name"), f"a {kind} given by URL")
        for need in ("url", "sha256"):
            if need not in f:
                raise self.error(node, f"{kind}: a model given by URL needs url: and sha256: (the file's SHA-256)")
        url, sha = self.plain(f["url"][1]), self.plain(f["sha256"][1])
        if not isinstance(url, str) or not URL.match(url):
            raise self.error(f["url"][1], f"{kind}: url: expected hf://ORG/REPO/FILE or an http(s):// URL, "
                                          f"got {kind_of(url)}")
        if not isinstance(sha, str) or not SHA256.fullmatch(sha.lower()):
            raise self.error(f["sha256"][1], f"{kind}: sha256: expected the file's SHA-256 (64 hex digits), "
                                             f"got {kind_of(sha)}")
        stem = url.split("?")[0].rsplit("/", 1)[-1]
        suffix = "." + stem.rsplit(".", 1)[-1].lower() if "." in stem else ""
        if suffix not in SUFFIXES[kind]:
            raise self.error(f["url"][1], f"{kind}: url: a {kind} file ends in {', '.join(SUFFIXES[kind])}")
        name = self.plain(f["name"][1]) if "name" in f else stem[: -len(suffix)]
        if not isinstance(name, str) or not re.fullmatch(r"[\w.\- ]{1,200}", name):
            raise self.error(f["name"][1] if "name" in f else f["url"][1],
                             f"{kind}: name: letters, digits, '.', '-', '_' or spaces, got {kind_of(name)}")
        pin = (sha.lower(), url)
        if self.links.setdefault(f"{kind}:{name}", pin) != pin:
            raise self.error(node, f"{kind}: '{name}' is given twice with different url or sha256")
        return name

    def checkpoints(self, node: Node, models_dir: Path | None) -> tuple[list[str], dict[str, Path]]:
        names, files = [], {}
        for text, item, by_url in self.named(node, "checkpoint", "a checkpoint name (file stem)"):
            name = text if by_url else text.removesuffix(".safetensors").removesuffix(".ckpt")
            if models_dir is not None and not by_url:
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

    def lora_tags(self, f: dict, models_dir: Path) -> dict[str, Path]:
        """Every `<lora:NAME...>` (and `<lyco:...>`) a render will apply must resolve in the models
        folder, or name a LoRA the spec gives by URL (the lora key), or the job fails here instead
        of task by task at render time. The tags come from the prompt values (a matrix prompt's
        parts included) and from the prompts as prompt_sr rewrites them (a replacement may be, or
        change, a LoRA name). Negative prompts' tags are not applied (A1111), so not checked. Names
        are resolved as the worker does. Returns name -> file of the tags' LoRAs (their pins)."""
        registry = Registry(models_dir)
        files = registry.files("lora")  # one scan; resolve() only for names not found by name
        problems: dict[str, str | None] = {}  # name -> why it does not resolve (None: it does)
        found: dict[str, Path] = {}

        def check(text: str, node: Node, where: str = "") -> None:
            try:
                refs = lora_refs(extract_extra_networks(text)[1])
            except ValueError as e:  # a weight that is no number
                raise self.error(node, f"prompt: {e}") from None
            for ref in refs:
                if ref.name not in problems:
                    problems[ref.name] = None
                    if f"lora:{ref.name}" in self.links:
                        continue  # given by URL: pinned by its sha256 (farm/spec/jobspec.py lora_hash)
                    try:
                        found[ref.name] = files[ref.name].path if ref.name in files else \
                            registry.resolve("lora", ref.name, label="LoRA").path
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
        return found

    def embeddings(self, models_dir: Path) -> dict[str, Path]:
        """name -> file of the models folder's embeddings whose name is a word of the spec's text:
        every one a prompt may use (a few more at most: a word of a comment), to pin by sha256."""
        files = Registry(models_dir).files("embedding")
        return {name: files[name].path for name in words_in(files, [self.source])}

    def upscaler_names(self, node: Node, models_dir: Path | None, axis: str = "hr_upscaler"
                       ) -> tuple[list[str], dict[str, Path]]:
        """An upscaler axis: A1111's built-in upscalers or upscaler model files (farm/upscalers.py),
        the files checked against the models folder if given; name -> file for the models."""
        registry = Registry(models_dir) if models_dir is not None else None
        names = self.upscalers(node, list(registry.files("upscaler")) if registry else None, axis)
        files = {}
        for name, item in names:
            if axis != "hr_upscaler" and name in LATENT_UPSCALERS:
                raise self.error(item, f"{axis}: '{name}' works on a diffusion model's latents, hires fix only "
                                 "(hr_upscaler); here: None, Lanczos, Nearest or an upscaler model")
            if registry is not None and is_model_upscaler(name):
                try:
                    files[name] = registry.resolve("upscaler", name, label="upscaler model").path
                except ValueError as e:
                    raise self.error(item, f"{axis}: {e}") from None
        return [name for name, _ in names], files

    def model_names(self, node: Node, kind: str, models_dir: Path | None) -> tuple[list[str], dict[str, Path]]:
        """A vae or lora axis: file stems (or None), checked against the models folder if given."""
        names, files = [], {}
        for text, item, by_url in self.named(node, kind, f"a {kind} name (file stem) or {NO_MODEL}"):
            name = NO_MODEL if text.lower() in ("none", "automatic") else re.sub(r"\.(safetensors|ckpt|pt)$", "", text)
            if by_url:
                name = text
            elif models_dir is not None and name != NO_MODEL:
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
