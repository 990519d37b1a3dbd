"""SDXL: two text encoders (CLIP-L, 768 wide, and OpenCLIP bigG, 1280 wide), a UNet with 4 latent
channels that also takes a pooled text vector and the size/crop numbers.

Conditioning: A1111 takes layer -(clip_skip + 1) of both encoders (clip skip 1: the penultimate
layer SDXL was trained on), no final LayerNorm, concatenated per token; the pooled vector is the
second encoder's, from the first chunk. LoRAs: kohya `lora_unet_` (LDM `input_blocks` names),
`lora_te1_` and `lora_te2_` prefixes. Embeddings hold `clip_l` and `clip_g` vectors.
"""

from __future__ import annotations

import torch

from farm.families import BY_NAME
from worker.families.base import TINY_SEED, TINY_UNET, WorkerFamily, give_layer_norms_biases, tiny_vae

FACTS = BY_NAME["SDXL"]


def tiny_pipeline():
    """The in-memory tiny SDXL pipeline (CPU, fp32): the SDXL UNet wiring (text_time embedding,
    linear projections, 2 transformer layers deep), CLIP-L-like encoder of width 32, OpenCLIP-like
    encoder of width 64 with 10 layers (from_single_file's SDXL probe is `resblocks.9`)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from worker.pipelines import configs_dir

    sdxl = configs_dir() / FACTS.config_folder
    clip = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, vocab_size=49408,
                max_position_embeddings=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(
            **TINY_UNET,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=8 * 6 + 32,  # 6 size/crop numbers + pooled text (32)
            cross_attention_dim=32 + 64,  # both encoders' hidden states, concatenated
        )
        vae = tiny_vae(scaling_factor=0.13025)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3, **clip)
        )
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(hidden_size=64, intermediate_size=74, num_attention_heads=4, num_hidden_layers=10,
                           projection_dim=32, hidden_act="gelu", **clip)
        )
    give_layer_norms_biases(text_encoder)
    give_layer_norms_biases(text_encoder_2)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(str(sdxl / "tokenizer"), local_files_only=True),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(sdxl / "tokenizer_2"), local_files_only=True),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_pretrained(str(sdxl), subfolder="scheduler", local_files_only=True),
    )
    for m in (unet, vae, text_encoder, text_encoder_2):
        m.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ldm_text_encoders(pipe) -> dict:
    """CLIP-L under the conditioner's first embedder, then OpenCLIP bigG under the second."""
    from worker.ldm_layout import CLIP_PREFIX_SDXL, clip_to_ldm, open_clip_to_ldm

    return {**clip_to_ldm(pipe.text_encoder.state_dict(), prefix=CLIP_PREFIX_SDXL),
            **open_clip_to_ldm(pipe.text_encoder_2.state_dict())}


FAMILY = WorkerFamily(
    facts=FACTS,
    encoders=(("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")),
    lora_prefixes=(("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2")),
    tiny_pipeline=tiny_pipeline,
    ldm_text_encoders=ldm_text_encoders,
    skipped_layers=1,
    final_norm=False,
    pooled_step_input="add_text_embeds",
)
