"""The worker's renderer: what it does with its model folders for a task (or a batch of tasks):
load the checkpoint under the memory profile, pick the batch size, put the task's VAE, LoRAs and
embeddings on the pipeline for the render only, and render with the task's kind.

`TaskModels.prepared(pipe, tasks)` is a context manager: it yields the tasks (of one batch) as the
renderer must see them (extra-network tags taken out of both prompts, A1111 semantics) and, per
task, the infotext keys the additions earn (`VAE hash`, `VAE`, `Lora hashes`, `TI hashes`). On
exit, whatever happened, the pipeline is the bare checkpoint again: LoRA layers unloaded,
embedding tokens removed, the checkpoint's own VAE back; nothing leaks into the next task.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from farm.depot import words_in
from farm.families import family
from farm.model_files import ModelFileError
from farm.hashes import sha256_file
from farm.models import ModelFile, Registry
from farm.prompts import extract_extra_networks, lora_refs
from farm.task import RenderTask
from worker.embeddings import load_embeddings, unload_embeddings, used_embeddings
from worker.families import ModelFiles, PartsFamily, of_pipeline
from worker.inpainting import is_inpainting
from worker.lora import apply_loras, remove_loras
from worker.memory import (MemoryProfile, apply_profile, auto_max_batch, choose_profile, place, prepare_vae,
                           profile_for, set_vae_tiling)
from worker.pipelines import load_pipeline
from worker.safe_load import ModelLoadError
from worker.vae import VaeSwap

REFINER = "SDXL refiner"  # farm/families.py's row of the refiner checkpoints


class TaskModels:
    def __init__(self, models_dir: Path | str, profile: MemoryProfile | None = None, allow_pickle: bool = False):
        self.registry = Registry(models_dir)
        self.profile = profile or choose_profile()
        self.allow_pickle = allow_pickle
        self._vaes = VaeSwap()

    def load(self, checkpoint: Path | ModelFiles):
        """The PipelineCache's loader: load on the CPU in the profile's dtype, then place it under
        the profile this model gets (profile_for: `--vram auto` offloads a model that needs it)."""
        refiner = checkpoint.part("refiner") if isinstance(checkpoint, ModelFiles) else None
        if refiner is not None:  # an SDXL checkpoint with its refiner (worker/refiner.py)
            checkpoint = ModelFiles(checkpoint.checkpoint)
        pipe = load_pipeline(checkpoint, device="cpu", dtype=self.profile.dtype, allow_pickle=self.allow_pickle)
        if of_pipeline(pipe).name == REFINER:
            raise ModelLoadError(f"{_name(checkpoint)}: an SDXL refiner renders only as the refiner of an SDXL "
                                 "checkpoint (refiner: NAME in the job spec)")
        footprint = _footprint(checkpoint, of_pipeline(pipe).name)
        profile = profile_for(self.profile, of_pipeline(pipe).name, footprint)
        pipe.seedfarm_profile = profile
        pipe.seedfarm_stored = footprint.precision if footprint is not None else "?"
        if refiner is not None:
            pipe.seedfarm_refiner = self._load_refiner(refiner, pipe, profile)
        return apply_profile(pipe, profile)

    def _load_refiner(self, path: Path, pipe, profile: MemoryProfile):
        """The refiner pipeline, placed as its base is: both sit on the card (farm/vram.py)."""
        if of_pipeline(pipe).name != "SDXL":
            raise ModelLoadError(f"{path.name}: a refiner takes over SDXL renders only, not {of_pipeline(pipe).name}")
        refiner = load_pipeline(path, device="cpu", dtype=self.profile.dtype, allow_pickle=self.allow_pickle)
        if of_pipeline(refiner).name != REFINER:
            raise ModelLoadError(f"{path.name}: not an SDXL refiner checkpoint ({of_pipeline(refiner).name}); "
                                 "seedfarm refines with SDXL refiner checkpoints only")
        refiner.seedfarm_profile = profile
        return apply_profile(refiner, profile)

    def describe(self, pipe) -> str:
        """How the loaded model sits on this worker, for `farm workers`: 'Q8_0 as bfloat16, vram low'."""
        profile = self.profile_of(pipe)
        compute = str(getattr(pipe, "seedfarm_dtype", None) or profile.dtype).removeprefix("torch.")
        return f"{getattr(pipe, 'seedfarm_stored', '?')} as {compute}, vram {profile.vram}"

    def profile_of(self, pipe) -> MemoryProfile:
        return getattr(pipe, "seedfarm_profile", self.profile)

    def max_batch(self, pipe, task: RenderTask) -> int:
        """Images of this task's size per diffusion call, from the card's pixel budget."""
        from farm.hires import output_size

        width, height = output_size(task)  # a hires task's second pass is the larger
        profile = self.profile_of(pipe)
        if getattr(pipe, "seedfarm_refiner", None) is not None and profile.vram_gb > 0:
            # the refiner's weights sit on the card too: less room for pixels (farm/vram.py)
            profile = replace(profile, vram_gb=max(0.01, profile.vram_gb - family(REFINER).weights_gb))
        return auto_max_batch(profile, of_pipeline(pipe).name, width, height)

    def render(self, pipe, kind, slots: list) -> list:
        """The images of `slots` (worker.render.Slot), rendered by the task kind's module."""
        return kind.render(pipe, slots)

    @contextlib.contextmanager
    def prepared(self, pipe, tasks: list[RenderTask]) -> Iterator[tuple[list[RenderTask], list[dict[str, str]]]]:
        """For tasks with equal batch keys (farm/batching.py: one VAE, one set of LoRAs)."""
        task = tasks[0]
        prompts, negatives = [], []
        for t in tasks:
            prompts.append(extract_extra_networks(t.prompt)[0])
            negatives.append(extract_extra_networks(t.negative_prompt)[0])  # A1111 applies only the prompt's
        try:
            refs = lora_refs(extract_extra_networks(task.prompt)[1])
        except ValueError as e:
            raise ModelLoadError(str(e)) from None
        own_vae = pipe.vae
        extra: dict[str, str] = {}
        try:
            # a family built from parts was built with the task's VAE (worker.context.model_files)
            if task.vae and not isinstance(of_pipeline(pipe), PartsFamily):
                extra.update(self._use_vae(pipe, task.vae, task.vae_hash))
            set_vae_tiling(pipe, self.profile_of(pipe), task.width, task.height)
            lora_hashes = apply_loras(pipe, refs, self.registry, self.allow_pickle, self._pinned_loras(task, refs))
            if lora_hashes:
                extra["Lora hashes"] = _hash_list(lora_hashes)
            if not isinstance(of_pipeline(pipe), PartsFamily) and is_inpainting(of_pipeline(pipe).denoiser_of(pipe)):
                extra["Conditional mask weight"] = "1.0"  # A1111 writes it for every render of an inpainting model
            # each task's infotext names the embeddings its own prompts use; the batch loads them all
            used = [self._pinned_embeddings(t, used_embeddings(self.registry, [p, n]), [p, n])
                    for t, p, n in zip(tasks, prompts, negatives)]
            load_embeddings(pipe, {name: path for u in used for name, path in u.items()}, self.allow_pickle)
            params = [{**extra, **_ti_hashes(u)} for u in used]
            stripped = [t.model_copy(update={"prompt": p, "negative_prompt": n})
                        for t, p, n in zip(tasks, prompts, negatives)]
            yield stripped, params
        finally:
            unload_embeddings(pipe)
            remove_loras(pipe)
            if pipe.vae is not own_vae:
                pipe.vae = own_vae
                place(pipe, self.profile_of(pipe))

    def _pinned(self, kind: str, sha256: str | None) -> Path | None:
        """The file with this sha256 whatever its name: the model cache's copy (worker/context.py)."""
        from worker.context import pinned_file

        return pinned_file(kind, sha256, Path(os.pathsep.join(map(str, self.registry.roots))))

    def _pinned_loras(self, task: RenderTask, refs) -> dict[str, Path]:
        """name -> file of the task's LoRAs whose file by that name here is not the pin (the task's
        lora_hashes, or the spec's URL and sha256): the pinned copy. No file by that name and no
        copy: the registry's 'unknown LoRA' line (apply_loras)."""
        pins = {key.split(":", 1)[1]: sha for key, (sha, _) in task.model_urls.items() if key.startswith("lora:")}
        pins.update(task.lora_hashes)
        out = {}
        for name in {ref.name for ref in refs if ref.name in pins}:
            try:
                own = self.registry.resolve("lora", name).path
            except ModelFileError:
                own = None
            found = self._pin("LoRA", "lora", name, own, pins[name])
            if found is not None and found != own:
                out[name] = found
        return out

    def _pinned_embeddings(self, task: RenderTask, used: dict[str, Path], texts: list[str]) -> dict[str, Path]:
        """`used` (name -> file of the embeddings the texts name) with the task's pinned ones (its
        embedding_hashes) as the pin's file: a same-named file with other weights is replaced by the
        pinned copy, and a pinned embedding this worker lacks is an error (its word would silently
        stay a word)."""
        used = dict(used)
        for name in words_in(task.embedding_hashes, texts):
            found = self._pin("embedding", "embedding", name, used.get(name), task.embedding_hashes[name])
            if found is None:
                raise ModelLoadError(f"embedding '{name}' (pinned {task.embedding_hashes[name][:10]}) is not on this "
                                     "worker, nor in its model cache or depot: copy the job's file to this worker "
                                     "or push it to the depot (farm models push)")
            used[name] = found
        return used

    def _pin(self, label: str, kind: str, name: str, own: Path | None, sha256: str) -> Path | None:
        """The file to use for a pinned model: `own` (the file by that name here) when it has the
        pin's hash (hashed once per path, size and mtime: farm/hashes.py), else the file with that
        hash (model cache, or another name here), else None when there is no own file; a same-named
        file with other weights and no pinned copy fails the task in one line."""
        digest = sha256_file(own) if own is not None else None
        if digest == sha256:
            return own
        found = self._pinned(kind, sha256)
        if found is None and own is not None:
            raise ModelLoadError(f"{label} '{name}' at {own} has hash {digest[:10]}, but the job pins "
                                 f"{sha256[:10]} and neither the model cache nor the depot has it: copy the job's "
                                 "file to this worker or push it to the depot (farm models push)")
        return found

    def _use_vae(self, pipe, name: str, expected_hash: str | None) -> dict[str, str]:
        try:
            model = self.registry.resolve("vae", name)
            digest = model.sha256()
        except ModelFileError as e:
            found = self._pinned("vae", expected_hash)  # fetched into the model cache under its hash
            if found is None:
                raise ModelLoadError(str(e)) from None
            model, digest = ModelFile("vae", name, found), expected_hash
        if expected_hash and digest != expected_hash:  # a same-named VAE with other weights: the pinned copy
            found = self._pinned("vae", expected_hash)
            if found is not None:
                model, digest = ModelFile("vae", model.name, found), expected_hash
        if expected_hash and digest != expected_hash:
            raise ModelLoadError(
                f"VAE '{name}' at {model.path} has hash {digest[:10]}, but the job was expanded against "
                f"{expected_hash[:10]}: copy the same file to this worker"
            )
        vae = self._vaes.get(model.path, pipe.seedfarm_config_dir, self.allow_pickle)
        prepare_vae(vae, self.profile_of(pipe))
        pipe.vae = vae
        place(pipe, self.profile_of(pipe))
        return {"VAE hash": digest[:10], "VAE": model.name}


def _name(checkpoint: Path | ModelFiles) -> str:
    return (checkpoint.checkpoint if isinstance(checkpoint, ModelFiles) else Path(checkpoint)).name


def _footprint(checkpoint: Path | ModelFiles, family_name: str):
    """What the model holds (farm/vram.py), or None when its files cannot say."""
    from farm.vram import footprint

    files = checkpoint if isinstance(checkpoint, ModelFiles) else ModelFiles(Path(checkpoint))
    try:
        return footprint(family_name, files.checkpoint, dict(files.parts))
    except (ModelFileError, OSError):
        return None


def _ti_hashes(embeddings: dict[str, Path]) -> dict[str, str]:
    if not embeddings:
        return {}
    from farm.hashes import sha256_file

    return {"TI hashes": _hash_list({n: sha256_file(p)[:12] for n, p in embeddings.items()})}


def _hash_list(hashes: dict[str, str]) -> str:
    """A1111's `Lora hashes`/`TI hashes` value: "name: hash, ..." with `:` and `,` out of names."""
    return ", ".join(f"{name.replace(':', '').replace(',', '')}: {h}" for name, h in hashes.items())
