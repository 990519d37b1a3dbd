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

Sizes: transformer width 32 (2 heads of 16), 1 double + 1 single block; the text encoders and the
VAE are the tiny parts every family's tiny model shares (worker/tiny_parts.py: CLIP-L 32 wide, T5
128 wide, the real vocabularies, a 4-level 16-channel VAE). Same seed -> same weights on every
call; [dev] and [schnell] differ only in the transformer's guidance embedding.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from farm.families import DENOISER_PREFIX
from worker import tiny_parts
from worker.families.base import TINY_SEED
from worker.tiny_parts import save_safetensors as _save

TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                   num_attention_heads=2, axes_dims_rope=(4, 6, 6),
                   # the shared tiny parts' widths (worker/tiny_parts.py): T5 128, CLIP-L 32
                   joint_attention_dim=tiny_parts.CONFIGS["t5xxl"]["d_model"],
                   pooled_projection_dim=tiny_parts.CONFIGS["clip_l"]["hidden_size"])
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
    """The tiny FluxPipeline (CPU, fp32): [dev] with guidance, [schnell] without; its text
    encoders and VAE are the shared tiny parts (worker/tiny_parts.py)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from worker.families.flux1 import load_tokenizers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + 1)
        transformer = _real_norms(FluxTransformer2DModel(**TRANSFORMER, guidance_embeds=guidance))
    tokenizer, tokenizer_2 = load_tokenizers()
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(SCHEDULERS[guidance])
    pipe = FluxPipeline(scheduler=scheduler, vae=tiny_parts.vae("flux"), text_encoder=tiny_parts.clip_text_model(),
                        tokenizer=tokenizer, text_encoder_2=tiny_parts.t5xxl(), tokenizer_2=tokenizer_2,
                        transformer=transformer.eval())
    pipe.set_progress_bar_config(disable=True)
    pipe.seedfarm_family = "Flux.1 [dev]" if guidance else "Flux.1 [schnell]"  # one class, two families
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

def transformer_tensors(transformer) -> dict:
    from worker.families.flux1 import to_original

    return to_original(transformer.state_dict(), transformer.config)


def text_encoder_tensors() -> dict:
    """The text encoders under an all-in-one file's prefixes (Forge's Flux checkpoints)."""
    out = {f"text_encoders.clip_l.transformer.{k}": v for k, v in tiny_parts.part_tensors("clip_l").items()}
    out.update({f"text_encoders.t5xxl.transformer.{k}": v for k, v in tiny_parts.part_tensors("t5xxl").items()})
    return out


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


def write_tiny(models_dir: Path, guidance: bool = True, name: str | None = None,
               precisions: tuple[str, ...] = ("fp32", "fp8_e4m3fn", "Q8_0"), all_in_one: bool = True) -> dict:
    """Write the tiny Flux.1 model ([dev] with guidance, else [schnell]) and its parts into
    models_dir (ComfyUI layout). Returns {"denoiser": path, "fp8_e4m3fn": path, "Q8_0": path,
    "all_in_one": path, "clip_l": path, "t5xxl": path, "vae": path} for what was written."""
    models_dir = Path(models_dir)
    name = name or ("flux1-dev-tiny" if guidance else "flux1-schnell-tiny")
    pipe = tiny_pipeline(guidance)
    out: dict[str, Path] = {role: tiny_parts.write_part(models_dir, role) for role in ("clip_l", "t5xxl")}
    out["vae"] = tiny_parts.write_part(models_dir, "flux")

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
            path = tiny_parts.write_gguf(denoiser, folder / f"{name}-Q8_0.gguf", "flux")
            out[precision] = path
        else:
            raise ValueError(f"unknown precision {precision!r}")
        write_config_dir(pipe, path.with_name(path.stem + ".config"), guidance)
    if all_in_one:
        state = {DENOISER_PREFIX + k: v for k, v in denoiser.items()}
        state.update(text_encoder_tensors())
        state.update({"vae." + k: v for k, v in tiny_parts.part_tensors("flux").items()})
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
