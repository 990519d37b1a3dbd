"""Tiny random-weight Flux.1 [dev] / [schnell] models, written in the users' file layout (ComfyUI's
models folder), and the same pipeline built in memory for equality tests.

    <models_dir>/diffusion_models/<name>.safetensors        the denoiser alone, BFL key layout, fp32
    <models_dir>/diffusion_models/<name>-fp8_e4m3fn.safetensors   the same in fp8 (2-D weights; 1-D in fp32)
    <models_dir>/diffusion_models/<name>-Q8_0.gguf          the same as GGUF Q8_0 (1-D tensors F32;
                                                            general.architecture "flux", as ComfyUI-GGUF)
    <models_dir>/checkpoints/<name>-aio.safetensors          all-in-one: model.diffusion_model.*,
                                                            text_encoders.{clip_l,t5xxl}.transformer.*, vae.*
    each with <stem>.config/ (model_index, transformer, scheduler, vae, text_encoder(_2) configs)
    <models_dir>/text_encoders/clip_l.safetensors (+ clip_l.config.json)      `text_model.*`
    <models_dir>/text_encoders/t5xxl_fp16.safetensors (+ .config.json)        fp16, `encoder.*` + `shared.weight`
    <models_dir>/vae/ae.safetensors (+ ae.config.json)                         BFL/LDM layout, 16 latent channels

Sizes: transformer width 32 (2 heads of 16), 1 double + 1 single block; CLIP-L width 32 (the real
49408-token vocabulary); T5 width 32 with the real 32128-row embedding; a 4-level VAE (8x, 32
channels). Same seed -> same weights on every call; [dev] and [schnell] share every part but the
transformer's guidance embedding. T5's weights are fp16-representable, so the fp16 file loads back
exactly.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from farm.families import DENOISER_PREFIX
from worker.families.base import TINY_SEED

TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                   num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
CLIP = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32, intermediate_size=37,
            num_attention_heads=4, num_hidden_layers=2, vocab_size=49408, max_position_embeddings=77,
            projection_dim=32)
T5 = dict(d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, vocab_size=32128, feed_forward_proj="gated-gelu",
          dense_act_fn="gelu_new", is_gated_act=True, relative_attention_num_buckets=32,
          relative_attention_max_distance=128, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[32, 32, 32, 32], layers_per_block=1,
           down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
           norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611,
           shift_factor=0.1159, force_upcast=True)
# the real models' scheduler configs (black-forest-labs/FLUX.1-dev and -schnell)
SCHEDULER = dict(_class_name="FlowMatchEulerDiscreteScheduler", base_image_seq_len=256, base_shift=0.5,
                 max_image_seq_len=4096, max_shift=1.15, num_train_timesteps=1000)
SCHEDULERS = {True: dict(SCHEDULER, shift=3.0, use_dynamic_shifting=True),
              False: dict(SCHEDULER, shift=1.0, use_dynamic_shifting=False)}
MODEL_INDEX = {
    "_class_name": "FluxPipeline",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def tiny_pipeline(guidance: bool = True):
    """The tiny FluxPipeline (CPU, fp32): [dev] with guidance, [schnell] without."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from worker.families.flux1 import load_tokenizers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP))
        text_encoder_2 = T5EncoderModel(T5Config(**T5))
        vae = _real_norms(AutoencoderKL(**VAE))
        torch.manual_seed(TINY_SEED + 1)  # the same parts for both variants, whatever the transformer draws
        transformer = _real_norms(FluxTransformer2DModel(**TRANSFORMER, guidance_embeds=guidance))
    with torch.no_grad():
        for p in text_encoder_2.parameters():  # fp16-representable: t5xxl_fp16 loads back exactly
            p.copy_(p.to(torch.float16).to(torch.float32))
    tokenizer, tokenizer_2 = load_tokenizers()
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(SCHEDULERS[guidance])
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)
    for m in (transformer, vae, text_encoder, text_encoder_2):
        m.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _real_norms(model):
    """Random-init norms are exactly 1 and biases 0; real ones are not (and a tiny model whose
    every bias is 0 hides mistakes in their conversion)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape) * 0.1)
    return model


# ---- the users' layouts ---------------------------------------------------------------------------

def clip_tensors(text_encoder) -> dict:
    """CLIPTextModel -> ComfyUI clip_l layout (`text_model.*`)."""
    state = text_encoder.state_dict()
    return {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()
            if not k.endswith("position_ids")}


def t5_tensors(text_encoder_2) -> dict:
    """T5EncoderModel -> ComfyUI t5xxl layout (`shared.weight`, `encoder.*`; the tied
    `encoder.embed_tokens` stored once, as `shared`)."""
    return {k: v for k, v in text_encoder_2.state_dict().items() if k != "encoder.embed_tokens.weight"}


def vae_tensors(vae) -> dict:
    from worker.ldm_layout import vae_to_ldm

    return vae_to_ldm(vae.state_dict(), vae.config, prefix="")


def transformer_tensors(transformer) -> dict:
    from worker.families.flux1 import to_original

    return to_original(transformer.state_dict(), transformer.config)


def text_encoder_tensors(pipe) -> dict:
    """The text encoders under an all-in-one file's prefixes (Forge's Flux checkpoints)."""
    out = {f"text_encoders.clip_l.transformer.{k}": v for k, v in clip_tensors(pipe.text_encoder).items()}
    out.update({f"text_encoders.t5xxl.transformer.{k}": v for k, v in t5_tensors(pipe.text_encoder_2).items()})
    return out


def _save(state: dict, path: Path, dtype=None) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().clone()
             for k, v in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
    return path


def _encoder_config(model) -> dict:
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    return config


def write_config_dir(pipe, folder: Path, guidance: bool) -> Path:
    """The diffusers config folder a tiny denoiser loads with (its own `<stem>.config/`)."""
    if folder.exists():
        shutil.rmtree(folder)
    for sub in ("transformer", "scheduler", "vae", "text_encoder", "text_encoder_2"):
        (folder / sub).mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    pipe.transformer.save_config(str(folder / "transformer"))
    pipe.vae.save_config(str(folder / "vae"))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULERS[guidance], indent=2) + "\n")
    for sub, model in (("text_encoder", pipe.text_encoder), ("text_encoder_2", pipe.text_encoder_2)):
        (folder / sub / "config.json").write_text(json.dumps(_encoder_config(model), indent=2, sort_keys=True) + "\n")
    return folder


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_gguf(state: dict, path: Path) -> Path:
    """A GGUF file as ComfyUI-GGUF's Flux files are: BFL tensor names, 2-D weights Q8_0 (rows whose
    length is a multiple of 32), everything else F32, general.architecture "flux"."""
    import gguf
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), "flux")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    for name, tensor in state.items():
        array = tensor.detach().to(torch.float32).numpy()
        if array.ndim >= 2 and array.shape[-1] % 32 == 0:
            writer.add_tensor(name, gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    return path


def write_tiny(models_dir: Path, guidance: bool = True, name: str | None = None,
               precisions: tuple[str, ...] = ("fp32", "fp8_e4m3fn", "Q8_0"), all_in_one: bool = True) -> dict:
    """Write the tiny Flux.1 model ([dev] with guidance, else [schnell]) and its parts into
    models_dir (ComfyUI layout). Returns {"denoiser": path, "fp8_e4m3fn": path, "Q8_0": path,
    "all_in_one": path, "clip_l": path, "t5xxl": path, "vae": path} for what was written."""
    models_dir = Path(models_dir)
    name = name or ("flux1-dev-tiny" if guidance else "flux1-schnell-tiny")
    pipe = tiny_pipeline(guidance)
    out: dict[str, Path] = {}
    encoders = models_dir / "text_encoders"
    out["clip_l"] = _save(clip_tensors(pipe.text_encoder), encoders / "clip_l.safetensors")
    _write_json(encoders / "clip_l.config.json", _encoder_config(pipe.text_encoder))
    out["t5xxl"] = _save(t5_tensors(pipe.text_encoder_2), encoders / "t5xxl_fp16.safetensors", torch.float16)
    _write_json(encoders / "t5xxl_fp16.config.json", _encoder_config(pipe.text_encoder_2))
    out["vae"] = _save(vae_tensors(pipe.vae), models_dir / "vae" / "ae.safetensors")
    _write_json(models_dir / "vae" / "ae.config.json", dict(pipe.vae.config))

    denoiser = transformer_tensors(pipe.transformer)
    folder = models_dir / "diffusion_models"
    for precision in precisions:
        if precision == "fp32":
            path = _save(denoiser, folder / f"{name}.safetensors", torch.float32)
            out["denoiser"] = path
        elif precision in ("fp8_e4m3fn", "fp8_e5m2"):
            fp8 = torch.float8_e4m3fn if precision == "fp8_e4m3fn" else torch.float8_e5m2
            path = _save({k: v.to(fp8) if v.ndim >= 2 else v for k, v in denoiser.items()},
                         folder / f"{name}-{precision}.safetensors")
            out[precision] = path
        elif precision == "Q8_0":
            path = write_gguf(denoiser, folder / f"{name}-Q8_0.gguf")
            out[precision] = path
        else:
            raise ValueError(f"unknown precision {precision!r}")
        write_config_dir(pipe, path.with_name(path.stem + ".config"), guidance)
    if all_in_one:
        state = {DENOISER_PREFIX + k: v for k, v in denoiser.items()}
        state.update(text_encoder_tensors(pipe))
        state.update({"vae." + k: v for k, v in vae_tensors(pipe.vae).items()})
        path = _save(state, models_dir / "checkpoints" / f"{name}-aio.safetensors", torch.float32)
        write_config_dir(pipe, path.with_name(path.stem + ".config"), guidance)
        out["all_in_one"] = path
    return out


def write_tiny_dev(models_dir: Path, name: str | None = None) -> Path:
    """`farm models make-tiny --family "Flux.1 [dev]"`: returns the denoiser-only file."""
    return write_tiny(models_dir, True, name)["denoiser"]


def write_tiny_schnell(models_dir: Path, name: str | None = None) -> Path:
    return write_tiny(models_dir, False, name)["denoiser"]


# ---- tiny LoRAs --------------------------------------------------------------------------------

def write_tiny_lora(models_dir: Path, name: str, layout: str = "kohya", guidance: bool = True, seed: int = 1,
                    rank: int = 4) -> Path:
    """A tiny Flux LoRA under models_dir/loras/: layout "kohya" (ComfyUI/kohya sd-scripts:
    `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight` ..., with alpha) or "diffusers"
    (ai-toolkit/diffusers: `transformer.transformer_blocks.0.attn.to_q.lora_A.weight` ...).
    The kohya file adapts double-block modules and single_blocks' linear2 only: diffusers splits a
    kohya `linear1` with the real width 3072 hard-coded, which a tiny model cannot have."""
    pipe = tiny_pipeline(guidance)
    generator = torch.Generator().manual_seed(seed)
    original = transformer_tensors(pipe.transformer)
    diffusers_state = pipe.transformer.state_dict()
    state = {}

    def pair(out_features: int, in_features: int):
        return (torch.randn(rank, in_features, generator=generator) * 0.5,
                torch.randn(out_features, rank, generator=generator) * 0.5)

    if layout == "kohya":
        modules = ["double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.proj", "double_blocks.0.txt_attn.qkv",
                   "double_blocks.0.img_mlp.0", "double_blocks.0.txt_mlp.2", "single_blocks.0.linear2"]
        for module in modules:
            out_features, in_features = original[module + ".weight"].shape
            down, up = pair(out_features, in_features)
            key = "lora_unet_" + module.replace(".", "_")
            state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = down, up
            state[f"{key}.alpha"] = torch.tensor(float(rank))
    elif layout == "diffusers":
        modules = ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_v", "transformer_blocks.0.attn.add_k_proj",
                   "transformer_blocks.0.ff.net.0.proj", "single_transformer_blocks.0.attn.to_q",
                   "single_transformer_blocks.0.proj_mlp", "single_transformer_blocks.0.proj_out"]
        for module in modules:
            out_features, in_features = diffusers_state[module + ".weight"].shape
            down, up = pair(out_features, in_features)
            state[f"transformer.{module}.lora_A.weight"], state[f"transformer.{module}.lora_B.weight"] = down, up
    else:
        raise ValueError(f"unknown LoRA layout {layout!r}")
    return _save(state, Path(models_dir) / "loras" / f"{name}.safetensors")
