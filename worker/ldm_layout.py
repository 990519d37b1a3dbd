"""Inverse converters: diffusers state dicts -> the A1111/LDM single-file key layout.

diffusers ships only the forward direction (LDM -> diffusers) in its package, and its repo scripts for
the inverse hard-code the full SD shape (4 blocks, 2 resnets), so they fail on tiny test models. These
derive every index from the model's config, mirroring diffusers' own `convert_ldm_unet_checkpoint` /
`convert_ldm_vae_checkpoint`, so a file written here loads through `from_single_file` exactly.

Used by worker/tiny.py to write test checkpoints (SD1.5 and SDXL).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

# Where each model lives inside an A1111 checkpoint.
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX_SD1 = "cond_stage_model.transformer."
CLIP_PREFIX_SDXL = "conditioner.embedders.0.transformer."
OPEN_CLIP_PREFIX_SDXL = "conditioner.embedders.1.model."

_UNET_FIXED = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",  # SDXL text_time embedding
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "conv_shortcut.": "skip_connection.",
}
_VAE_FIXED = {
    "encoder.conv_norm_out.": "encoder.norm_out.",
    "decoder.conv_norm_out.": "decoder.norm_out.",
}
_VAE_ATTN = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}


def _cfg(config: Any) -> Mapping[str, Any]:
    """diffusers configs are FrozenDicts; plain dicts work too."""
    return config if isinstance(config, Mapping) else dict(config)


def _split(key: str, n: int) -> tuple[list[str], str]:
    """'down_blocks.1.resnets.0.conv1.weight', 4 -> (['down_blocks','1','resnets','0'], 'conv1.weight')."""
    parts = key.split(".")
    return parts[:n], ".".join(parts[n:])


def _rename(rest: str, table: Mapping[str, str]) -> str:
    for old, new in table.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Any, prefix: str = UNET_PREFIX) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel state dict -> `model.diffusion_model.*` keys.

    Down block b, layer l -> input_blocks.{1 + b(L+1) + l}.{0 resnet | 1 attention}; its downsampler ->
    input_blocks.{1 + b(L+1) + L}.0.op. Up block b (L+1 layers) -> output_blocks.{b(L+1) + l}; its
    upsampler sits after the last layer's resnet (and attention, if any): .{1|2}.conv.
    """
    cfg = _cfg(config)
    per = cfg["layers_per_block"]
    if not isinstance(per, int):
        raise ValueError("unet_to_ldm needs one layers_per_block for all blocks")
    up_has_attn = [t.startswith("CrossAttn") for t in cfg["up_block_types"]]
    out: dict[str, torch.Tensor] = {}

    for key, value in state_dict.items():
        fixed = _rename(key, _UNET_FIXED)
        if fixed != key:
            new = fixed
        elif key.startswith("down_blocks."):
            (_, b, kind, i), rest = _split(key, 4)
            b, i = int(b), int(i)
            base = 1 + b * (per + 1)
            if kind == "resnets":
                new = f"input_blocks.{base + i}.0.{_rename(rest, _UNET_RESNET)}"
            elif kind == "attentions":
                new = f"input_blocks.{base + i}.1.{rest}"
            elif kind == "downsamplers":  # rest = 'conv.weight'
                new = f"input_blocks.{base + per}.0.op.{rest.removeprefix('conv.')}"
            else:
                raise KeyError(f"unexpected UNet key {key}")
        elif key.startswith("mid_block."):
            (_, kind, i), rest = _split(key, 3)
            if kind == "resnets":
                new = f"middle_block.{2 * int(i)}.{_rename(rest, _UNET_RESNET)}"
            elif kind == "attentions":
                new = f"middle_block.1.{rest}"
            else:
                raise KeyError(f"unexpected UNet key {key}")
        elif key.startswith("up_blocks."):
            (_, b, kind, i), rest = _split(key, 4)
            b, i = int(b), int(i)
            base = b * (per + 1)
            if kind == "resnets":
                new = f"output_blocks.{base + i}.0.{_rename(rest, _UNET_RESNET)}"
            elif kind == "attentions":
                new = f"output_blocks.{base + i}.1.{rest}"
            elif kind == "upsamplers":
                slot = 2 if up_has_attn[b] else 1
                new = f"output_blocks.{base + per}.{slot}.{rest}"
            else:
                raise KeyError(f"unexpected UNet key {key}")
        else:
            raise KeyError(f"unexpected UNet key {key} (class/extra embeddings are not supported yet)")
        out[prefix + new] = value
    return out


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Any, prefix: str = VAE_PREFIX) -> dict[str, torch.Tensor]:
    """AutoencoderKL state dict -> `first_stage_model.*` keys. The decoder's up blocks are numbered in
    reverse in LDM; the mid attention's linear layers are 1x1 convs there."""
    n_up = len(_cfg(config)["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        coder, _, rest = key.partition(".")
        if key.startswith(("quant_conv.", "post_quant_conv.")):
            new = key
        elif rest.startswith(("conv_in.", "conv_out.", "conv_norm_out.")):
            new = _rename(key, _VAE_FIXED)
        elif rest.startswith("down_blocks."):
            (_, i, kind, j), tail = _split(rest, 4)
            if kind == "resnets":
                new = f"{coder}.down.{i}.block.{j}.{tail.replace('conv_shortcut.', 'nin_shortcut.')}"
            else:  # downsamplers.0.conv.*
                new = f"{coder}.down.{i}.downsample.{tail}"
        elif rest.startswith("up_blocks."):
            (_, i, kind, j), tail = _split(rest, 4)
            i = n_up - 1 - int(i)
            if kind == "resnets":
                new = f"{coder}.up.{i}.block.{j}.{tail.replace('conv_shortcut.', 'nin_shortcut.')}"
            else:  # upsamplers.0.conv.*
                new = f"{coder}.up.{i}.upsample.{tail}"
        elif rest.startswith("mid_block.resnets."):
            (_, _, j), tail = _split(rest, 3)
            new = f"{coder}.mid.block_{int(j) + 1}.{tail.replace('conv_shortcut.', 'nin_shortcut.')}"
        elif rest.startswith("mid_block.attentions.0."):
            tail = _rename(rest.removeprefix("mid_block.attentions.0."), _VAE_ATTN)
            new = f"{coder}.mid.attn_1.{tail}"
            if value.ndim == 2:  # linear -> 1x1 conv, as LDM stores it
                value = value[:, :, None, None]
        else:
            raise KeyError(f"unexpected VAE key {key}")
        out[prefix + new] = value
    return out


def clip_to_ldm(state_dict: Mapping[str, torch.Tensor], prefix: str = CLIP_PREFIX_SD1) -> dict[str, torch.Tensor]:
    """CLIPTextModel state dict -> `cond_stage_model.transformer.text_model.*` keys. transformers >= 5.6
    flattened CLIPTextModel (no `text_model.` in its keys), so the prefix is added back when missing."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(("text_model.", "text_projection.")):
            key = "text_model." + key
        out[prefix + key] = value
    return out


_OPEN_CLIP_LAYER = {
    "self_attn.out_proj.": "attn.out_proj.",
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}


def open_clip_to_ldm(
    state_dict: Mapping[str, torch.Tensor], prefix: str = OPEN_CLIP_PREFIX_SDXL
) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection state dict -> OpenCLIP keys (SDXL's second text encoder): q/k/v
    concatenated into `attn.in_proj_*`, the projection stored transposed, as diffusers'
    `convert_open_clip_checkpoint` expects."""
    sd = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    out: dict[str, torch.Tensor] = {
        prefix + "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": sd.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": sd.pop("final_layer_norm.bias"),
        prefix + "text_projection": sd.pop("text_projection.weight").T,
    }
    sd.pop("embeddings.position_ids", None)
    for key in [k for k in sd if k.endswith("self_attn.q_proj.weight") or k.endswith("self_attn.q_proj.bias")]:
        layer, kind = key.split(".")[2], key.rsplit(".", 1)[1]  # encoder.layers.{i}.self_attn.q_proj.{kind}
        base = f"encoder.layers.{layer}.self_attn."
        parts = [sd.pop(f"{base}{p}_proj.{kind}") for p in ("q", "k", "v")]
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(parts)
    for key, value in sd.items():
        if not key.startswith("encoder.layers."):
            raise KeyError(f"unexpected OpenCLIP key {key}")
        (_, _, layer), rest = _split(key, 3)
        out[f"{prefix}transformer.resblocks.{layer}.{_rename(rest, _OPEN_CLIP_LAYER)}"] = value
    return out
