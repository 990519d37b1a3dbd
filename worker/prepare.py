"""What a worker does with its model folders for one task: load the checkpoint under the memory
profile, then put the task's VAE, LoRAs and embeddings on the pipeline for the render only.

`TaskModels.prepared(pipe, task)` is a context manager: it yields the task as the renderer must see
it (extra-network tags taken out of both prompts, A1111 semantics) and the infotext keys the
additions earn (`VAE hash`, `VAE`, `Lora hashes`, `TI hashes`). On exit, whatever happened, the
pipeline is the bare checkpoint again: LoRA layers unloaded, embedding tokens removed, the
checkpoint's own VAE back; nothing leaks into the next task.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from farm.models import ModelFileError, Registry
from farm.prompts import extract_extra_networks, lora_refs
from farm.task import RenderTask
from worker.embeddings import load_embeddings, unload_embeddings, used_embeddings
from worker.lora import apply_loras, remove_loras
from worker.memory import MemoryProfile, apply_profile, choose_profile, place, prepare_vae, set_vae_tiling
from worker.pipelines import load_pipeline
from worker.safe_load import ModelLoadError
from worker.vae import VaeSwap


class TaskModels:
    def __init__(self, models_dir: Path | str, profile: MemoryProfile | None = None, allow_pickle: bool = False):
        self.registry = Registry(models_dir)
        self.profile = profile or choose_profile()
        self.allow_pickle = allow_pickle
        self._vaes = VaeSwap()

    def load(self, checkpoint: Path):
        """The PipelineCache's loader: load on the CPU in the profile's dtype, then place it."""
        pipe = load_pipeline(checkpoint, device="cpu", dtype=self.profile.dtype, allow_pickle=self.allow_pickle)
        return apply_profile(pipe, self.profile)

    @contextlib.contextmanager
    def prepared(self, pipe, task: RenderTask) -> Iterator[tuple[RenderTask, dict[str, str]]]:
        prompt, networks = extract_extra_networks(task.prompt)
        negative, _ = extract_extra_networks(task.negative_prompt)  # A1111 applies only the prompt's
        try:
            refs = lora_refs(networks)
        except ValueError as e:
            raise ModelLoadError(str(e)) from None
        own_vae = pipe.vae
        extra: dict[str, str] = {}
        try:
            if task.vae:
                extra.update(self._use_vae(pipe, task.vae, task.vae_hash))
            set_vae_tiling(pipe, self.profile, task.width, task.height)
            lora_hashes = apply_loras(pipe, refs, self.registry, self.allow_pickle)
            embeddings = used_embeddings(self.registry, [prompt, negative])
            load_embeddings(pipe, embeddings, self.allow_pickle)
            if lora_hashes:
                extra["Lora hashes"] = _hash_list(lora_hashes)
            if embeddings:
                from farm.checkpoints import sha256_file

                extra["TI hashes"] = _hash_list({n: sha256_file(p)[:12] for n, p in embeddings.items()})
            yield task.model_copy(update={"prompt": prompt, "negative_prompt": negative}), extra
        finally:
            unload_embeddings(pipe)
            remove_loras(pipe)
            if pipe.vae is not own_vae:
                pipe.vae = own_vae
                place(pipe, self.profile)

    def _use_vae(self, pipe, name: str, expected_hash: str | None) -> dict[str, str]:
        try:
            model = self.registry.resolve("vae", name)
            digest = model.sha256()
        except ModelFileError as e:
            raise ModelLoadError(str(e)) from None
        if expected_hash and digest != expected_hash:
            raise ModelLoadError(
                f"VAE '{name}' at {model.path} has hash {digest[:10]}, but the job was expanded against "
                f"{expected_hash[:10]}: copy the same file to this worker"
            )
        vae = self._vaes.get(model.path, pipe.seedfarm_config_dir, self.allow_pickle)
        prepare_vae(vae, self.profile)
        pipe.vae = vae
        place(pipe, self.profile)
        return {"VAE hash": digest[:10], "VAE": model.name}


def _hash_list(hashes: dict[str, str]) -> str:
    """A1111's `Lora hashes`/`TI hashes` value: "name: hash, ..." with `:` and `,` out of names."""
    return ", ".join(f"{name.replace(':', '').replace(',', '')}: {h}" for name, h in hashes.items())
