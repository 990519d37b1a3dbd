"""Tiny random-weight Flux.2 [klein] 4B / 9B models in the users' file layout (ComfyUI's models
folder), and the same pipeline built in memory for equality tests.

    <models_dir>/diffusion_models/<name>.safetensors          the denoiser alone, BFL key layout (fp32/bf16)
    <models_dir>/diffusion_models/<name>-fp8_e4m3fn.safetensors  the same, 2-D weights in fp8
    <models_dir>/diffusion_models/<name>-Q8_0.gguf             GGUF Q8_0 (1-D tensors F32; architecture "flux")
    <models_dir>/checkpoints/<name>-aio.safetensors            all-in-one: model.diffusion_model.*,
                                                              text_encoders.qwen3_<4b|8b>.*, vae.*
    each with <stem>.config/ (model_index with text_encoder_out_layers, transformer, scheduler,
    text_encoder, vae configs)
    <models_dir>/text_encoders/qwen_3_4b.safetensors (4B) or qwen_3_8b.safetensors (9B) + .config.json
    <models_dir>/vae/flux2-vae.safetensors (+ .config.json)    BFL's Flux.2 VAE layout

Sizes: the transformer is 32 wide (2 heads of 16) with the real block counts (4B: 5 double + 20
single, 9B: 8 + 24; farm/families.py tells the variants by them); its text width is 3 x the tiny
encoder's (Qwen3 "4B" 32 wide with 3 layers, "8B" 64 wide with 4: worker/tiny_parts.py), stacking
layers (1, 2, 3). The VAE is the shared tiny Flux.2 VAE (32 latent channels).
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

VARIANTS = {
    "4b": dict(family="Flux.2 [klein] 4B", role="qwen3_4b", num_layers=5, num_single_layers=20, name="flux2-klein-4b-tiny"),
    "9b": dict(family="Flux.2 [klein] 9B", role="qwen3_8b", num_layers=8, num_single_layers=24, name="flux2-klein-9b-tiny"),
}
TEXT_LAYERS = (1, 2, 3)
# the real klein scheduler config (black-forest-labs/FLUX.2-klein-4B and -9B)
SCHEDULER = dict(_class_name="FlowMatchEulerDiscreteScheduler", base_image_seq_len=256, base_shift=0.5,
                 max_image_seq_len=4096, max_shift=1.15, num_train_timesteps=1000, shift=3.0,
                 time_shift_type="exponential", use_dynamic_shifting=True)
MODEL_INDEX = {"_class_name": "Flux2KleinPipeline", "is_distilled": True,
               "text_encoder_out_layers": list(TEXT_LAYERS),  # seedfarm's key: the tiny encoders are shallow
               "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
               "text_encoder": ["transformers", "Qwen3ForCausalLM"], "tokenizer": ["transformers", "Qwen2TokenizerFast"],
               "transformer": ["diffusers", "Flux2Transformer2DModel"], "vae": ["diffusers", "AutoencoderKLFlux2"]}


def transformer_config(variant: str) -> dict:
    v = VARIANTS[variant]
    width = tiny_parts.CONFIGS[v["role"]]["hidden_size"]
    return dict(patch_size=1, in_channels=128, num_layers=v["num_layers"], num_single_layers=v["num_single_layers"],
                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=len(TEXT_LAYERS) * width,
                timestep_guidance_channels=64, mlp_ratio=3.0, axes_dims_rope=(4, 4, 4, 4), rope_theta=2000,
                guidance_embeds=False)


def tiny_transformer(variant: str):
    from diffusers import Flux2Transformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + (2 if variant == "4b" else 3))
        model = Flux2Transformer2DModel(**transformer_config(variant))
        with torch.no_grad():  # random-init norms are exactly 1: real ones are not
            for p in model.parameters():
                if p.ndim == 1:
                    p.add_(torch.randn(p.shape) * 0.1)
    return model.eval()


def tiny_pipeline(variant: str = "4b"):
    """The tiny Flux2KleinPipeline (CPU, fp32) of "4b" or "9b", as the family's load builds it
    (is_distilled False: CFG as the task asks; the stacked text layers TEXT_LAYERS)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    from worker.families.zimage import load_tokenizer

    v = VARIANTS[variant]
    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_config(SCHEDULER),
                              vae=tiny_parts.vae("flux2"), text_encoder=tiny_parts.qwen3(v["role"]),
                              tokenizer=load_tokenizer(), transformer=tiny_transformer(variant), is_distilled=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.seedfarm_family = v["family"]
    pipe.seedfarm_text_layers, pipe.seedfarm_distilled = TEXT_LAYERS, True
    return pipe


def write_config_dir(variant: str, folder: Path) -> Path:
    """The `<stem>.config/` folder a tiny denoiser carries."""
    if folder.exists():
        shutil.rmtree(folder)
    for sub in ("transformer", "scheduler", "vae", "text_encoder"):
        (folder / sub).mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    transformer = dict(transformer_config(variant), _class_name="Flux2Transformer2DModel")
    (folder / "transformer" / "config.json").write_text(json.dumps(transformer, indent=2) + "\n")
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2) + "\n")
    role = VARIANTS[variant]["role"]
    for sub, part in (("vae", "flux2"), ("text_encoder", role)):
        config = tiny_parts.part_config(part)
        (folder / sub / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=list) + "\n")
    return folder


def write_tiny(models_dir: Path, variant: str = "4b", name: str | None = None,
               precisions: tuple[str, ...] = ("fp32", "fp8_e4m3fn", "Q8_0"), all_in_one: bool = True) -> dict:
    """Write the tiny klein model and its parts into models_dir (ComfyUI layout). Returns
    {"denoiser", "bf16", "fp8_e4m3fn", "Q8_0", "all_in_one", <encoder role>, "vae"} -> path for what was written."""
    from worker.families.flux2 import transformer_to_original

    models_dir = Path(models_dir)
    v = VARIANTS[variant]
    name = name or v["name"]
    out: dict[str, Path] = {v["role"]: tiny_parts.write_part(models_dir, v["role"]),
                            "vae": tiny_parts.write_part(models_dir, "flux2")}
    denoiser = transformer_to_original(tiny_transformer(variant).state_dict())
    folder = models_dir / "diffusion_models"
    for precision in precisions:
        if precision in ("fp32", "bf16"):
            dtype = torch.float32 if precision == "fp32" else torch.bfloat16
            suffix = "" if precision == "fp32" else "-bf16"
            path = out["denoiser" if precision == "fp32" else precision] = _save(
                denoiser, folder / f"{name}{suffix}.safetensors", dtype)
        elif precision in ("fp8_e4m3fn", "fp8_e5m2"):
            fp8 = getattr(torch, "float8_" + precision.removeprefix("fp8_"))
            path = out[precision] = _save({k: v.to(fp8) if v.ndim >= 2 else v for k, v in denoiser.items()},
                                          folder / f"{name}-{precision}.safetensors")
        elif precision == "Q8_0":
            path = out[precision] = tiny_parts.write_gguf(denoiser, folder / f"{name}-Q8_0.gguf", "flux")
        else:
            raise ValueError(f"unknown precision {precision!r}")
        write_config_dir(variant, path.with_name(path.stem + ".config"))
    if all_in_one:
        state = {DENOISER_PREFIX + k: t for k, t in denoiser.items()}
        state.update({f"text_encoders.{v['role']}.{k}": t for k, t in tiny_parts.part_tensors(v["role"]).items()})
        state.update({"vae." + k: t for k, t in tiny_parts.part_tensors("flux2").items()})
        path = out["all_in_one"] = _save(state, models_dir / "checkpoints" / f"{name}-aio.safetensors", torch.float32)
        write_config_dir(variant, path.with_name(path.stem + ".config"))
    return out


def write_tiny_lora(models_dir: Path, name: str, layout: str = "kohya", variant: str = "4b", seed: int = 1,
                    rank: int = 4) -> Path:
    """A tiny klein LoRA under models_dir/loras/: "kohya" (ComfyUI/kohya names of BFL modules:
    `lora_unet_double_blocks_0_img_attn_proj.lora_down.weight` + alpha) or "diffusers"
    (ai-toolkit/diffusers: `transformer.transformer_blocks.0.attn.to_q.lora_A.weight`)."""
    from worker.families.flux2 import transformer_to_original

    transformer = tiny_transformer(variant)
    generator = torch.Generator().manual_seed(seed)
    state = {}

    def pair(shape):
        out_features, in_features = shape
        return (torch.randn(rank, in_features, generator=generator) * 0.5,
                torch.randn(out_features, rank, generator=generator) * 0.5)

    if layout == "kohya":
        original = transformer_to_original(transformer.state_dict())
        for module in ("double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.proj", "double_blocks.0.txt_mlp.0",
                       "single_blocks.0.linear1", "single_blocks.1.linear2"):
            down, up = pair(original[module + ".weight"].shape)
            key = "lora_unet_" + module.replace(".", "_")
            state.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                          f"{key}.alpha": torch.tensor(float(rank))})
    elif layout == "diffusers":
        weights = transformer.state_dict()
        for module in ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.add_v_proj",
                       "transformer_blocks.0.ff.linear_in", "single_transformer_blocks.0.attn.to_qkv_mlp_proj",
                       "single_transformer_blocks.1.attn.to_out"):
            down, up = pair(weights[module + ".weight"].shape)
            state[f"transformer.{module}.lora_A.weight"], state[f"transformer.{module}.lora_B.weight"] = down, up
    else:
        raise ValueError(f"unknown LoRA layout {layout!r}")
    return _save(state, Path(models_dir) / "loras" / f"{name}.safetensors")
