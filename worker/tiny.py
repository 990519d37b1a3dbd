"""A tiny random-weight SD1.5-family model, written as a real A1111-layout checkpoint.

Tests and `farm models make-tiny` use it to drive the real load path (single file + config folder)
in seconds on a CPU. The weights come from a fixed torch seed, so the file and its SHA-256 are the
same on every run (with the same torch/diffusers versions).

Layout written:
    <models_dir>/Stable-diffusion/<name>.safetensors   the checkpoint (about 15 MB, mostly the
                                                        49408 x 32 token embedding)
    <models_dir>/Stable-diffusion/<name>.config/       its diffusers config folder: the tiny
                                                        unet/vae/text_encoder configs, the SD1.5
                                                        scheduler and the real CLIP tokenizer
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from worker.ldm_layout import clip_to_ldm, unet_to_ldm, vae_to_ldm
from worker.pipelines import SD15_CONFIG, configs_dir

TINY_SEED = 0


def tiny_pipeline():
    """The in-memory pipeline make_tiny writes (CPU, fp32). Same seed -> same weights every call."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    sd15 = configs_dir() / SD15_CONFIG
    # fork_rng: build from a fixed seed without disturbing the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
        )
        vae = AutoencoderKL(
            block_out_channels=[32, 64],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
            latent_channels=4,
        )
        # Real CLIP vocab and special ids so the shipped tokenizer fits; 5 layers so clip skip matters.
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=49407,
                hidden_size=32,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=5,
                vocab_size=49408,
                max_position_embeddings=77,
            )
        )
    tokenizer = CLIPTokenizer.from_pretrained(str(sd15 / "tokenizer"), local_files_only=True)
    scheduler = PNDMScheduler.from_pretrained(str(sd15), subfolder="scheduler", local_files_only=True)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for m in (unet, vae, text_encoder):
        m.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_checkpoint(pipe, path: Path) -> None:
    """Write a diffusers SD1.5-family pipeline as one A1111-layout .safetensors file."""
    from safetensors.torch import save_file

    state = {
        **unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config),
        **vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config),
        **clip_to_ldm(pipe.text_encoder.state_dict()),
    }
    # contiguous copies: safetensors refuses shared or strided storage (the VAE's [:, :, None, None]).
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    # One metadata key only: safetensors writes metadata from a hash map, so with two keys their
    # order (and the file hash) changes from run to run.
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)  # a reader never sees a half-written checkpoint


def write_config_dir(pipe, config_dir: Path) -> None:
    """The diffusers config folder from_single_file needs for this architecture (no weights)."""
    sd15 = configs_dir() / SD15_CONFIG
    if config_dir.exists():
        shutil.rmtree(config_dir)
    config_dir.mkdir(parents=True)
    shutil.copy2(sd15 / "model_index.json", config_dir / "model_index.json")
    shutil.copytree(sd15 / "scheduler", config_dir / "scheduler")
    shutil.copytree(sd15 / "tokenizer", config_dir / "tokenizer")
    for name in ("unet", "vae"):
        (config_dir / name).mkdir()
        getattr(pipe, name).save_config(str(config_dir / name))
    (config_dir / "text_encoder").mkdir()
    te_config = pipe.text_encoder.config.to_dict()
    te_config["architectures"] = ["CLIPTextModel"]
    (config_dir / "text_encoder" / "config.json").write_text(json.dumps(te_config, indent=2, sort_keys=True) + "\n")


def make_tiny(models_dir: Path, name: str = "seedfarm-tiny") -> Path:
    """Build the tiny model and write it under models_dir/Stable-diffusion/. Returns the checkpoint."""
    target_dir = Path(models_dir) / "Stable-diffusion"
    target_dir.mkdir(parents=True, exist_ok=True)
    pipe = tiny_pipeline()
    checkpoint = target_dir / f"{name}.safetensors"
    write_config_dir(pipe, target_dir / f"{name}.config")
    write_checkpoint(pipe, checkpoint)
    return checkpoint
