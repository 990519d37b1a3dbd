"""The tiny text encoders and VAEs that the tiny models of the families built from parts share, as
the real ones are shared: Flux.1 and SD3.5 both read `clip_l` and `t5xxl_fp16`, Flux.1 and Z-Image
the same `ae`. Each part is built from its own seed and written by one function, so whichever
family's tiny writer writes `text_encoders/clip_l.safetensors`, the file is the same, and one
models folder holds the tiny models of every family (`farm models make-tiny DIR --family ...`
several times), as a user's does.

Also the file writers the tiny models use: safetensors (atomic) and GGUF (ComfyUI-GGUF's layout).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

CLIP = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, intermediate_size=64,
            num_attention_heads=4, num_hidden_layers=4, vocab_size=49408, max_position_embeddings=77,
            hidden_act="gelu")
CONFIGS = {
    # 32 / 64 wide: CLIP-L is the narrower, as the real ones (768 / 1280); real vocab and special ids
    "clip_l": dict(CLIP, hidden_size=32, projection_dim=32, hidden_act="quick_gelu"),
    "clip_g": dict(CLIP, hidden_size=64, projection_dim=64, intermediate_size=128),
    # 128 wide: SD3.5 pads CLIP-L + CLIP-G (96) to T5's width, as the real ones (2048 -> 4096)
    "t5xxl": dict(d_model=128, d_ff=256, d_kv=32, num_layers=2, num_heads=4, vocab_size=32128,
                  feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, is_encoder_decoder=False,
                  pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
    "qwen3_4b": dict(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
                     rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643,
                     eos_token_id=151645, attention_bias=False, hidden_act="silu", model_type="qwen3"),
}
# Qwen3-8B (Flux.2 [klein] 9B's encoder) is wider than Qwen3-4B, as the real ones (4096 / 2560)
CONFIGS["qwen3_8b"] = dict(CONFIGS["qwen3_4b"], hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[32, 32, 32, 32],
            layers_per_block=1, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
            norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True)
VAES = {"flux": dict(_VAE, scaling_factor=0.3611, shift_factor=0.1159, force_upcast=True),  # Flux.1's ae
        "sd3": dict(_VAE, scaling_factor=1.5305, shift_factor=0.0609)}
# Flux.2's VAE (AutoencoderKLFlux2): 32 latent channels, quant convs, a BatchNorm over 2x2 patches
FLUX2_VAE = dict(in_channels=3, out_channels=3, latent_channels=32, block_out_channels=[32, 32, 32, 32],
                 layers_per_block=1, down_block_types=["DownEncoderBlock2D"] * 4,
                 up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32, use_quant_conv=True,
                 use_post_quant_conv=True, mid_block_add_attention=True, patch_size=[2, 2], sample_size=64)
# Each part's own seed: the same weights whichever family builds it, whatever else it draws.
SEEDS = {"clip_l": 11, "clip_g": 12, "t5xxl": 13, "qwen3_4b": 14, "flux": 15, "sd3": 16, "qwen3_8b": 17,
         "flux2": 18}
# Where the writers put them: ComfyUI's folders and the names its example workflows use.
FILES = {"clip_l": "text_encoders/clip_l.safetensors", "clip_g": "text_encoders/clip_g.safetensors",
         "t5xxl": "text_encoders/t5xxl_fp16.safetensors", "qwen3_4b": "text_encoders/qwen_3_4b.safetensors",
         "flux": "vae/ae.safetensors", "sd3": "vae/sd35_vae.safetensors",
         "qwen3_8b": "text_encoders/qwen_3_8b.safetensors", "flux2": "vae/flux2-vae.safetensors"}


def _seeded(role: str, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEEDS[role])
        return build()


def _perturb_vectors(model, seed: int):
    """Random-init norms are exactly 1 and biases 0; real ones are not (and a tiny model whose every
    bias is 0 hides mistakes in their conversion)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


def clip(role: str):
    """The tiny CLIP-L or CLIP-G (CLIPTextModelWithProjection, as SD3.5 uses them; Flux.1 takes
    its text model: clip_text_model)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from worker.families.base import give_layer_norms_biases  # here: the families import this module

    model = _seeded(role, lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CONFIGS[role])))
    give_layer_norms_biases(model, seed=SEEDS[role])
    return model.eval()


def clip_text_model(role: str = "clip_l"):
    """The same CLIP as a CLIPTextModel (no projection), as Flux.1's pipeline holds it."""
    from transformers import CLIPTextModel

    full = clip(role)
    model = CLIPTextModel(full.config)
    model.load_state_dict({k.removeprefix("text_model."): v for k, v in full.state_dict().items()
                           if k.startswith("text_model.")})
    return model.eval()


def t5xxl():
    """The tiny T5 encoder; its weights are fp16 numbers, so `t5xxl_fp16` holds them exactly."""
    from transformers import T5Config, T5EncoderModel

    model = _seeded("t5xxl", lambda: T5EncoderModel(T5Config(**CONFIGS["t5xxl"])))
    _perturb_vectors(model, SEEDS["t5xxl"])
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.float16).to(torch.float32))
    return model.eval()


def qwen3(role: str = "qwen3_4b"):
    """The tiny Qwen3 (Qwen3Model: what Z-Image's and Flux.2 [klein]'s pipelines read): "qwen3_4b"
    (Z-Image, klein 4B) or "qwen3_8b" (klein 9B)."""
    from transformers import Qwen3Config, Qwen3Model

    model = _seeded(role, lambda: Qwen3Model(Qwen3Config(**CONFIGS[role])))
    return _perturb_vectors(model, SEEDS[role]).eval()


def vae(kind: str):
    """The tiny 16-channel VAE: "flux" (Flux.1's ae, also Z-Image's) or "sd3" (SD3.5's); or
    "flux2", the tiny AutoencoderKLFlux2 (32 channels; its BatchNorm's running statistics random,
    as a trained one's are)."""
    if kind == "flux2":
        from diffusers import AutoencoderKLFlux2

        model = _seeded(kind, lambda: AutoencoderKLFlux2(**FLUX2_VAE))
        generator = torch.Generator().manual_seed(SEEDS[kind] + 100)
        with torch.no_grad():
            model.bn.running_mean.copy_(torch.randn(model.bn.running_mean.shape, generator=generator) * 0.2)
            model.bn.running_var.copy_(torch.rand(model.bn.running_var.shape, generator=generator) + 0.5)
        return _perturb_vectors(model, SEEDS[kind]).eval()
    from diffusers import AutoencoderKL

    model = _seeded(kind, lambda: AutoencoderKL(**VAES[kind]))
    return _perturb_vectors(model, SEEDS[kind]).eval()


# ---- the users' layouts ----------------------------------------------------------------------------

def part_tensors(role: str) -> dict:
    """A part's tensors as its users' file holds them: ComfyUI's clip_l/clip_g (`text_model.*`,
    `text_projection.weight`), t5xxl (`shared.weight`, `encoder.*`), qwen_3_4b (`model.*`); a VAE
    in the LDM layout (`encoder.*`, `decoder.*`)."""
    if role in ("clip_l", "clip_g"):
        return {k: v for k, v in clip(role).state_dict().items() if not k.endswith("position_ids")}
    if role == "t5xxl":  # the tied token embedding is stored once, as `shared`
        return {k: v for k, v in t5xxl().state_dict().items() if k != "encoder.embed_tokens.weight"}
    if role in ("qwen3_4b", "qwen3_8b"):
        return {"model." + k: v for k, v in qwen3(role).state_dict().items()}
    if role == "flux2":  # BFL's Flux.2 layout (worker/families/flux2.py)
        from worker.families.flux2 import vae_to_original

        model = vae(role)
        return vae_to_original(model.state_dict(), model.config)
    from worker.ldm_layout import vae_to_ldm

    model = vae(role)
    return vae_to_ldm(model.state_dict(), model.config, prefix="")


def part_config(role: str) -> dict:
    """The config a part's `<stem>.config.json` holds (what a loader builds it from)."""
    if role in VAES or role == "flux2":
        return dict(vae(role).config)
    model = {"clip_l": lambda: clip("clip_l"), "clip_g": lambda: clip("clip_g"), "t5xxl": t5xxl,
             "qwen3_4b": qwen3, "qwen3_8b": lambda: qwen3("qwen3_8b")}[role]()
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    return config


def write_part(models_dir: Path, role: str) -> Path:
    """Write one tiny part (FILES[role]) with its `<stem>.config.json`; returns the file."""
    path = Path(models_dir) / FILES[role]
    save_safetensors(part_tensors(role), path, torch.float16 if role == "t5xxl" else None)
    config = path.with_name(path.stem + ".config.json")
    config.write_text(json.dumps(part_config(role), indent=2, sort_keys=True, default=list) + "\n")
    return path


# ---- writing files -----------------------------------------------------------------------------------

def save_safetensors(state: dict, path: Path, dtype=None) -> Path:
    """Save atomically (a temp file renamed), floating tensors cast to `dtype` when given."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().clone()
             for k, v in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
    return path


def write_gguf(state: dict, path: Path, arch: str, quant: str = "Q8_0") -> Path:
    """A GGUF file as ComfyUI-GGUF's are: the original tensor names, 2-D weights whose rows split
    into 32-value blocks quantized (`quant`: Q8_0 or Q4_0, what the gguf package can write),
    everything else F32; general.architecture `arch`."""
    import gguf
    import numpy as np

    kind = getattr(gguf.GGMLQuantizationType, quant)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch=arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{quant}"))
    for name, tensor in state.items():
        array = tensor.detach().to(torch.float32).numpy()
        if array.ndim == 2 and name.endswith(".weight") and array.shape[-1] % 32 == 0:
            q = gguf.quants.quantize(array, kind)
            writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=kind)
        else:
            writer.add_tensor(name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    return path
