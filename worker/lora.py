"""LoRAs from `<lora:name:w>` / `<lora:name:te:unet>` prompt tags, applied for one task only.

kohya-format files (SD1.5 and SDXL) load through diffusers' `load_lora_weights` (peft), which
converts them. They are injected as separate adapter layers, never fused into the base weights,
and `remove_loras` unloads them all after the task, so the next task renders the bare checkpoint
(within fp32 rounding, about 1e-6).
"""

from __future__ import annotations

import re
from pathlib import Path

from farm.models import ModelFileError, Registry, file_family, lora_hash, read_safetensors_header
from farm.prompts import LoraRef
from worker.safe_load import ModelLoadError, is_pickle, load_pickle, refuse_pickle


def pipeline_family(pipe) -> str:
    return "SDXL" if getattr(pipe, "text_encoder_2", None) is not None else "SD1.5"


def read_lora(path: Path, allow_pickle: bool) -> dict:
    """The LoRA's tensors, read safely (a pickle only when allowed, weights-only)."""
    if is_pickle(path):
        if not allow_pickle:
            raise refuse_pickle(path, "LoRA")
        return load_pickle(path)
    from safetensors.torch import load_file

    try:
        read_safetensors_header(path)
        return load_file(str(path))
    except ModelFileError as e:
        raise ModelLoadError(str(e)) from None
    except Exception as e:  # safetensors' own errors: one line naming the file
        raise ModelLoadError(f"{path.name}: cannot read the LoRA ({(str(e).splitlines() or [''])[0][:200]})") from None


def apply_loras(pipe, refs: list[LoraRef], registry: Registry, allow_pickle: bool = False) -> dict[str, str]:
    """Load and activate the task's LoRAs with their text-encoder and UNet weights. Returns
    name -> A1111 LoRA hash (12 hex) for the infotext's `Lora hashes`. On an error the caller
    removes what was loaded (remove_loras; worker/prepare.py does it in any case)."""
    if not refs:
        return {}
    family = pipeline_family(pipe)
    hashes: dict[str, str] = {}
    names, weights = [], []
    for ref in refs:
        try:
            model = registry.resolve("lora", ref.name)
            lora_family = file_family(model.path, "lora")
        except ModelFileError as e:
            raise ModelLoadError(str(e)) from None
        if lora_family not in ("?", family):
            raise ModelLoadError(
                f"{model.path.name}: an {lora_family} LoRA cannot be used with an {family} checkpoint"
            )
        adapter = _adapter_name(ref.name, len(names))
        state = read_lora(model.path, allow_pickle)
        try:
            pipe.load_lora_weights(state, adapter_name=adapter)
        except Exception as e:  # diffusers/peft raise many types; one line naming the file
            reason = (str(e).splitlines() or [""])[0][:200]
            raise ModelLoadError(f"{model.path.name}: not a LoRA this worker can apply ({type(e).__name__}: {reason})") from None
        names.append(adapter)
        weight = {"unet": ref.unet_weight, "text_encoder": ref.te_weight}
        if family == "SDXL":
            weight["text_encoder_2"] = ref.te_weight
        weights.append(weight)
        hashes[ref.name] = lora_hash(model.path)[:12]
    pipe.set_adapters(names, adapter_weights=weights)
    return hashes


def remove_loras(pipe) -> None:
    """Take every LoRA layer out again: the pipeline is the bare checkpoint afterwards."""
    if hasattr(pipe, "unload_lora_weights") and any(pipe.get_list_adapters().values()):
        pipe.unload_lora_weights()


def _adapter_name(name: str, index: int) -> str:
    # peft keys modules by adapter name: no dots or spaces; the index keeps a repeated tag distinct.
    return f"{index}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"
