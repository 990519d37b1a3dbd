"""The SDXL refiner: a second SDXL UNet that finishes the last part of a render's steps (A1111's
Refiner, worker/refiner.py). One text encoder, OpenCLIP bigG (1280 wide; the refiner's first and
only conditioner embedder), read as SDXL reads it (layer -(clip_skip + 1), no final LayerNorm,
pooled vector from the first chunk), and size/crop/aesthetic-score numbers instead of SDXL's
size/crop/target-size ones. It loads as diffusers' StableDiffusionXLImg2ImgPipeline from
configs/sdxl-refiner and never renders alone: a checkpoint of this family as a job's `checkpoint`
is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from farm.families import BY_NAME
from worker.families import sdxl
from worker.families.base import TINY_SEED, TINY_UNET, WorkerFamily, give_layer_norms_biases

FACTS = BY_NAME["SDXL refiner"]
OPEN_CLIP_PREFIX = "conditioner.embedders.0.model."  # where A1111 refiner files keep bigG


@dataclass(frozen=True)
class RefinerFamily(WorkerFamily):
    @property
    def pipeline_classes(self) -> tuple[str, ...]:
        """None: an SDXL base's img2img pipeline (hires fix) has the refiner's class; a loaded
        refiner is marked with `seedfarm_family` instead (worker/pipelines.py)."""
        return ()


def tiny_pipeline():
    """The in-memory tiny refiner (CPU, fp32): the tiny SDXL UNet's wiring with the refiner's
    conditioning (one encoder of width 64, 5 size/crop/score numbers) and the tiny SDXL model's own
    VAE, so that it takes over that model's latents."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    from worker.pipelines import configs_dir

    folder = configs_dir() / FACTS.config_folder
    clip = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, vocab_size=49408,
                max_position_embeddings=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + 7)  # other weights than the tiny SDXL base
        unet = UNet2DConditionModel(
            **TINY_UNET,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=8 * 5 + 32,  # size, crop, aesthetic score + pooled (32)
            cross_attention_dim=64,  # bigG's hidden states alone
        )
        # 10 layers: diffusers' refiner probe is conditioner.embedders.0.model...resblocks.9
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(hidden_size=64, intermediate_size=74, num_attention_heads=4, num_hidden_layers=10,
                           projection_dim=32, hidden_act="gelu", **clip)
        )
    give_layer_norms_biases(text_encoder_2, seed=11)
    vae = sdxl.tiny_pipeline().vae  # the real refiner ships SDXL's VAE too
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=text_encoder_2,
        tokenizer=None,
        tokenizer_2=CLIPTokenizer.from_pretrained(str(configs_dir() / "sdxl" / "tokenizer_2"), local_files_only=True),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_pretrained(str(folder), subfolder="scheduler", local_files_only=True),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )
    for m in (unet, vae, text_encoder_2):
        m.eval()
    pipe.set_progress_bar_config(disable=True)
    pipe.seedfarm_family = FACTS.name
    return pipe


def ldm_text_encoders(pipe) -> dict:
    """bigG under the refiner's one conditioner embedder."""
    from worker.ldm_layout import open_clip_to_ldm

    return open_clip_to_ldm(pipe.text_encoder_2.state_dict(), prefix=OPEN_CLIP_PREFIX)


FAMILY = RefinerFamily(
    facts=FACTS,
    encoders=(("tokenizer_2", "text_encoder_2"),),
    lora_prefixes=(),  # LoRAs apply to the base model only
    tiny_pipeline=tiny_pipeline,
    ldm_text_encoders=ldm_text_encoders,
    skipped_layers=1,
    final_norm=False,
    pooled_step_input="add_text_embeds",
)
