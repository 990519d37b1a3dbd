"""LoRAs from `<lora:name:w>` / `<lora:name:te:unet>` prompt tags, applied for one task only.

Two paths, chosen per file from its tensor names:

- plain kohya LoRAs (`lora_up`/`lora_down`, SD1.5 and SDXL) load through diffusers'
  `load_lora_weights` (peft), which converts them. They are injected as separate adapter layers,
  never fused into the base weights, and `remove_loras` unloads them all after the task.
- LyCORIS LoHa (`hada_*`) and LoKr (`lokr_*`) files, which diffusers rejects, are applied here by
  hand as A1111 does: each module's delta weight is computed (LyCORIS's math, A1111's scaling),
  multiplied by the tag's te or unet weight and added to the module's weight. The original weight
  tensors are kept aside and copied back in `remove_loras`, so the next task renders the bare
  checkpoint bit for bit.
"""

from __future__ import annotations

import re
from pathlib import Path

from farm.families import UNKNOWN, file_family
from farm.model_files import ModelFileError, read_safetensors_header
from farm.models import ModelFile, Registry, lora_hash
from farm.prompts import LoraRef
from worker.families import of_pipeline
from worker.safe_load import ModelLoadError, is_pickle, load_pickle, refuse_pickle


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


def apply_loras(pipe, refs: list[LoraRef], registry: Registry, allow_pickle: bool = False,
                pinned: dict[str, Path] | None = None) -> dict[str, str]:
    """Load and activate the task's LoRAs with their text-encoder and UNet weights. Returns
    name -> A1111 LoRA hash (12 hex) for the infotext's `Lora hashes`. On an error the caller
    removes what was loaded (remove_loras; worker/prepare.py does it in any case). `pinned`: name ->
    file for LoRAs the spec pinned (worker/prepare.py), used instead of the file by that name."""
    if not refs:
        return {}
    family = of_pipeline(pipe)
    hashes: dict[str, str] = {}
    names, weights = [], []
    for ref in refs:
        try:
            model = ModelFile("lora", ref.name, pinned[ref.name]) if ref.name in (pinned or {}) else \
                registry.resolve("lora", ref.name)
            lora_family = file_family(model.path, "lora")
        except ModelFileError as e:
            raise ModelLoadError(str(e)) from None
        if lora_family not in (UNKNOWN, family.name):
            raise ModelLoadError(
                f"{model.path.name}: an {lora_family} LoRA cannot be used with an {family.name} checkpoint"
            )
        state = read_lora(model.path, allow_pickle)
        if is_lycoris(state):
            apply_lycoris(pipe, state, model.path.name, ref.te_weight, ref.unet_weight)
            hashes[ref.name] = lora_hash(model.path)[:12]
            continue
        adapter = _adapter_name(ref.name, len(names))
        convert = getattr(family, "convert_lora", None)  # a family whose files diffusers cannot convert (SD3.5 kohya)
        try:
            state = convert(pipe, state) if convert is not None else state
            pipe.load_lora_weights(state, adapter_name=adapter)
        except Exception as e:  # diffusers/peft raise many types; one line naming the file
            reason = (str(e).splitlines() or [""])[0][:200]
            raise ModelLoadError(f"{model.path.name}: not a LoRA this worker can apply ({type(e).__name__}: {reason})") from None
        names.append(adapter)
        # the tag's UNet weight for the denoiser, its text-encoder weight for every text encoder
        weight = {family.denoiser: ref.unet_weight, **{encoder: ref.te_weight for _, encoder in family.encoders}}
        weights.append(weight)
        hashes[ref.name] = lora_hash(model.path)[:12]
    if names:
        pipe.set_adapters(names, adapter_weights=weights)
    return hashes


def remove_loras(pipe) -> None:
    """Take every LoRA out again: the pipeline is the bare checkpoint afterwards."""
    restore_lycoris(pipe)
    if hasattr(pipe, "unload_lora_weights") and any(pipe.get_list_adapters().values()):
        pipe.unload_lora_weights()


def _adapter_name(name: str, index: int) -> str:
    # peft keys modules by adapter name: no dots or spaces; the index keeps a repeated tag distinct.
    return f"{index}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"


# --- LyCORIS LoHa / LoKr, applied by hand -------------------------------------------------------
#
# A kohya-style LyCORIS file holds `<module>.<part>` tensors, where <module> is a kohya module name
# (`lora_unet_...`, `lora_te_...`, SDXL `lora_te1_`/`lora_te2_`) and <part> one of the names below.
# A file may mix LoHa/LoKr modules with plain `lora_up`/`lora_down` (LoCon) ones. Such a file goes
# through this path as a whole, plain modules included: one file, one mechanism, and the tag's te
# and unet weights then mean the same for all its modules (A1111 too merges every module type the
# same way). Splitting a file between peft and this path would gain nothing. Files with no hada_/lokr_
# tensor stay on the diffusers path above, unchanged.

_LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
_PARTS = {
    *_LOHA, "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    "lora_up.weight", "lora_down.weight", "lora_mid.weight",
    "alpha",
}
# Where each kohya prefix points (prefix -> pipeline component): the family's lora_prefixes.
_ORIGINALS = "seedfarm_lycoris_originals"  # pipe attribute: id(param) -> (param, original copy)


def is_lycoris(state: dict) -> bool:
    """Whether a LoRA file holds any LoHa or LoKr module (then this module applies all of it)."""
    return any(key.partition(".")[2].startswith(("hada_", "lokr_")) for key in state)


def apply_lycoris(pipe, state: dict, filename: str, te_weight: float, unet_weight: float) -> None:
    """Add the file's delta weights to the pipeline's modules, scaled by the tag's te or unet
    weight. Everything is checked (module names, parts, shapes) before the first weight changes."""
    import torch

    modules = _group_modules(state, filename)
    index = kohya_module_index(pipe)
    unknown = sorted(m for m in modules if m not in index)
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise ModelLoadError(
            f"{filename}: unknown module '{unknown[0]}'{more}: not in this {of_pipeline(pipe).name} "
            f"checkpoint's UNet or text encoders"
        )
    plans = []
    for name, parts in modules.items():
        component, module = index[name]
        weight = module.weight
        multiplier = unet_weight if component == "unet" else te_weight
        with torch.device("meta"):  # shapes only: nothing is computed or allocated here
            probe = module_delta({k: torch.empty(v.shape) for k, v in parts.items() if k != "alpha"}, name, filename)
        if probe.numel() != weight.numel() or probe.shape[0] != weight.shape[0]:
            raise ModelLoadError(
                f"{filename}: module '{name}' gives a delta of {tuple(probe.shape)} for a weight of "
                f"{tuple(weight.shape)} (a LoRA for another model?)"
            )
        if multiplier != 0:  # weight 0: the module stays exactly as it is
            plans.append((name, parts, weight, multiplier))
    originals = _originals(pipe)
    with torch.no_grad():
        for name, parts, weight, multiplier in plans:
            # In fp32 on the weight's device (GPU, or the CPU while an offloaded model waits there),
            # then cast back to the weight's dtype (fp16/bf16 under a memory profile).
            device = weight.device
            delta = module_delta({k: v.to(device, torch.float32) for k, v in parts.items()}, name, filename)
            patched = weight.float() + multiplier * delta.reshape(weight.shape)
            if id(weight) not in originals:
                # A copy on the CPU (VRAM stays free), taken before the first change: put back as
                # it was, the weight is bit-identical to the checkpoint's again.
                originals[id(weight)] = (weight, weight.detach().to("cpu", copy=True))
            # In place: offload hooks move the parameter's storage between devices, so the
            # parameter object is changed, never replaced.
            weight.copy_(patched.to(weight.dtype))


def restore_lycoris(pipe) -> None:
    """Copy the original weights back into every module a LyCORIS file changed."""
    originals = getattr(pipe, _ORIGINALS, None)
    if not originals:
        return
    import torch

    with torch.no_grad():
        for weight, original in originals.values():
            weight.copy_(original)  # same dtype: exact, on whatever device the weight is now
    setattr(pipe, _ORIGINALS, {})


def _originals(pipe) -> dict:
    if getattr(pipe, _ORIGINALS, None) is None:
        setattr(pipe, _ORIGINALS, {})
    return getattr(pipe, _ORIGINALS)


def _group_modules(state: dict, filename: str) -> dict[str, dict]:
    """`module.part` tensors -> {module: {part: tensor}}, refusing parts this worker cannot apply."""
    modules: dict[str, dict] = {}
    for key, tensor in state.items():
        module, _, part = key.partition(".")
        if part not in _PARTS:
            what = "DoRA (dora_scale)" if part == "dora_scale" else f"'{part}'"
            raise ModelLoadError(
                f"{filename}: {module}: {what} is not supported here (LoHa, LoKr and plain LoRA modules are)"
            )
        modules.setdefault(module, {})[part] = tensor
    for module, parts in modules.items():
        kinds = {p.split("_")[0] for p in parts if p != "alpha"}
        complete = (
            kinds == {"hada"} and all(p in parts for p in _LOHA)
            or kinds == {"lokr"} and ("lokr_w1" in parts or {"lokr_w1_a", "lokr_w1_b"} <= set(parts))
            and ("lokr_w2" in parts or {"lokr_w2_a", "lokr_w2_b"} <= set(parts))
            or kinds == {"lora"} and {"lora_up.weight", "lora_down.weight"} <= set(parts)
        )
        if not complete:
            raise ModelLoadError(f"{filename}: module '{module}' is incomplete or mixes kinds ({', '.join(sorted(parts))})")
    return modules


def module_delta(parts: dict, name: str, filename: str):
    """One module's delta weight, alpha/rank scale included, before the tag's weight. Shaped as
    the factors give it (2-D or 4-D); the caller reshapes it to the weight. The math follows
    LyCORIS (lycoris/functional) and the scale A1111's extensions-builtin/Lora (network_hada.py,
    network_lokr.py, network.py calc_scale): alpha/rank where the file has an alpha and the module
    a rank, else 1."""
    import torch

    alpha = float(parts["alpha"]) if "alpha" in parts else None
    try:
        if "hada_w1_a" in parts:
            # LoHa: (w1a @ w1b) * (w2a @ w2b). A conv may be Tucker-decomposed per side: t (r, r, kh, kw)
            # with a (r, out), b (r, in); else b holds in*kh*kw and the product is reshaped.
            rank = parts["hada_w1_b"].shape[0]
            w1 = _loha_side(parts.get("hada_t1"), parts["hada_w1_a"], parts["hada_w1_b"])
            w2 = _loha_side(parts.get("hada_t2"), parts["hada_w2_a"], parts["hada_w2_b"])
            # A Tucker side is (out, in, kh, kw), a plain one (out, in*kh*kw): same numbers in order.
            delta = w1 * w2.reshape(w1.shape) if w1.dim() >= w2.dim() else w1.reshape(w2.shape) * w2
        elif "lokr_w1" in parts or "lokr_w1_a" in parts:
            # LoKr: kron(w1, w2), each full or factorised (a @ b); w2 may be Tucker (t2) for a conv.
            # The scale alpha/rank applies only when a side is factorised (rank = that factor's
            # inner size, w2's if both are): with both full, LyCORIS and A1111 use 1.
            rank = None
            if "lokr_w1" in parts:
                w1 = parts["lokr_w1"]
            else:
                w1 = parts["lokr_w1_a"] @ parts["lokr_w1_b"]
                rank = parts["lokr_w1_b"].shape[0]
            if "lokr_w2" in parts:
                w2 = parts["lokr_w2"]
            else:
                rank = parts["lokr_w2_b"].shape[0]
                if "lokr_t2" in parts:
                    w2 = _tucker(parts["lokr_t2"], parts["lokr_w2_a"], parts["lokr_w2_b"])
                else:
                    w2 = parts["lokr_w2_a"] @ parts["lokr_w2_b"].flatten(1)
            # w2 flattened to (b, in2*kh*kw): kron((a, c), that) laid out as (a*b, c*in2*kh*kw) is the
            # same numbers, in the same order, as the 4-D kron LyCORIS builds for a conv.
            delta = torch.kron(w1.flatten(1), w2.flatten(1))
        else:
            # A plain LoRA/LoCon module inside a LyCORIS file: up @ down, or Tucker with lora_mid.
            up, down = parts["lora_up.weight"].flatten(1), parts["lora_down.weight"]
            rank = down.shape[0]
            if "lora_mid.weight" in parts:
                delta = _tucker(parts["lora_mid.weight"], up.t(), down.flatten(1))
            else:
                delta = up @ down.flatten(1)
    except (RuntimeError, IndexError) as e:  # factors that do not fit together
        raise ModelLoadError(f"{filename}: module '{name}' has tensors that do not fit together ({str(e).splitlines()[0][:120]})") from None
    scale = alpha / rank if alpha is not None and rank else 1.0
    return delta * scale


def _loha_side(t, a, b):
    return a.flatten(1) @ b.flatten(1) if t is None else _tucker(t, a, b)


def _tucker(t, a, b):
    """Rebuild a Tucker-decomposed conv weight: core t (r1, r2, kh, kw), a (r1, out), b (r2, in)
    -> (out, in, kh, kw) (LyCORIS rebuild_tucker, A1111 make_weight_cp)."""
    import torch

    return torch.einsum("i j ..., i p, j r -> p r ...", t, a, b)


def kohya_module_index(pipe) -> dict[str, tuple[str, object]]:
    """kohya module name -> (component, the Linear/Conv2d module) for every module a LoRA can patch.

    Text encoders: `lora_te_` + the transformers module path with `.` -> `_`
    (`lora_te_text_model_encoder_layers_0_self_attn_q_proj`). The UNet under both names kohya
    tools write: diffusers module paths (`lora_unet_down_blocks_0_attentions_0_proj_in`, SD1.5
    kohya files) and LDM/SGM paths (`lora_unet_input_blocks_1_1_proj_in`, SDXL kohya files). The
    LDM names come from worker/ldm_layout.py's diffusers -> LDM key mapping, the one our tiny
    checkpoints are written with; diffusers' `_maybe_map_sgm_blocks_to_diffusers` only renumbers
    blocks and leaves resnet names (`in_layers_2`) to its peft key converter, which we do not use."""
    import torch

    from worker.ldm_layout import unet_to_ldm

    index: dict[str, tuple[str, object]] = {}
    family = of_pipeline(pipe)
    for prefix, component in family.lora_prefixes:
        model = getattr(pipe, component, None)
        if model is None:
            continue
        for path, module in model.named_modules():
            if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) or ".lora_" in path:
                continue  # peft's own lora_A/lora_B layers (a plain LoRA in the same task)
            path = path.removesuffix(".base_layer")  # a module wrapped by peft: patch the base
            names = [path]
            if component == family.denoiser:  # a UNet: also its LDM names
                try:
                    (ldm,) = unet_to_ldm({path + ".weight": None}, model.config, prefix="")
                    names.append(ldm.removesuffix(".weight"))
                except (KeyError, ValueError):
                    pass  # no LDM name (an extra embedding): diffusers name only
            elif not path.startswith("text_model."):
                names = ["text_model." + path]  # kohya names CLIP modules from CLIPTextModel's root
            for n in names:
                index[prefix + n.replace(".", "_")] = (component, module)
    return index
