"""SD1.5 (and its fine-tunes): one CLIP-L text encoder, a UNet with 4 latent channels.

Conditioning: A1111 takes layer -clip_skip of CLIP and applies the final LayerNorm (clip skip 1:
the last layer). LoRAs: kohya `lora_unet_` (diffusers module names) and `lora_te_` prefixes.
"""

from __future__ import annotations

import torch

from farm.families import BY_NAME
from worker.families.base import TINY_SEED, TINY_UNET, WorkerFamily, give_layer_norms_biases, tiny_vae

FACTS = BY_NAME["SD1.5"]


def tiny_pipeline():
    """The tiny SD1.5 pipeline (CPU, fp32) that worker/tiny.py writes. Same seed -> same weights
    every call."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from worker.pipelines import configs_dir

    sd15 = configs_dir() / FACTS.config_folder
    # fork_rng: build from a fixed seed without disturbing the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(**TINY_UNET, cross_attention_dim=32)
        vae = tiny_vae()
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
    give_layer_norms_biases(text_encoder)
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


def ldm_text_encoders(pipe) -> dict:
    from worker.ldm_layout import clip_to_ldm

    return clip_to_ldm(pipe.text_encoder.state_dict())


FAMILY = WorkerFamily(
    facts=FACTS,
    encoders=(("tokenizer", "text_encoder"),),
    lora_prefixes=(("lora_unet_", "unet"), ("lora_te_", "text_encoder")),
    tiny_pipeline=tiny_pipeline,
    ldm_text_encoders=ldm_text_encoders,
)
