"""What the worker knows about a model family (worker/families/<family>.py each declare one): the
pipeline's parts and how conditioning, latents and LoRAs address them. The torch-free facts (file
recognition, sizes, VRAM, config folder) are the family's row in farm/families.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from farm.families import Family


@dataclass(frozen=True)
class WorkerFamily:
    facts: Family  # the family's row in farm/families.py
    encoders: tuple[tuple[str, str], ...]  # (tokenizer, text encoder) pipeline attributes, in order
    lora_prefixes: tuple[tuple[str, str], ...]  # kohya module-name prefix -> pipeline component
    tiny_pipeline: Callable[[], object]  # the tiny random-weight pipeline of the tests
    ldm_text_encoders: Callable[[object], dict]  # the pipeline's text encoders as A1111 checkpoint tensors
    denoiser: str = "unet"  # the pipeline attribute of the denoising model (Flux/SD3: "transformer")
    # Which text-encoder output A1111 conditions on: hidden layer -(clip_skip + skipped_layers),
    # then the encoder's final LayerNorm when final_norm (with clip skip 1, just the last layer).
    skipped_layers: int = 0
    final_norm: bool = True
    # The pipeline's per-step tensor of the pooled text vector (replaced when prompt editing
    # switches conditioning), or None when the family conditions on no pooled vector.
    pooled_step_input: str | None = None

    @property
    def name(self) -> str:
        return self.facts.name

    @property
    def pipeline_classes(self) -> tuple[str, ...]:
        """The diffusers pipeline classes of the family (the table's, as a folder's model_index names them)."""
        return self.facts.pipeline_classes

    def denoiser_of(self, pipe):
        return getattr(pipe, self.denoiser)

    def text_encoders(self, pipe) -> list[tuple]:
        """The pipeline's (tokenizer, text encoder) pairs, in the family's order."""
        pairs = [(getattr(pipe, t, None), getattr(pipe, e, None)) for t, e in self.encoders]
        return [(t, e) for t, e in pairs if t is not None and e is not None]

    def embedding_targets(self, pipe) -> list[tuple[str, object, object]]:
        """(part of an embedding file, text encoder, tokenizer) for each of the family's encoders:
        an embedding holds one set of vectors per encoder (SD1.5: clip_l; SDXL: clip_l, clip_g)."""
        return [(part, encoder, tokenizer)
                for part, (tokenizer, encoder) in zip(self.facts.embedding_parts, self.text_encoders(pipe))]

    def latent_shape(self, pipe, width: int, height: int) -> tuple[int, int, int]:
        """(channels, height, width) of one image's latents (an inpainting UNet takes 5 more input
        channels than it has latent channels: its output's count is the latents')."""
        factor = pipe.vae_scale_factor
        return (self.denoiser_of(pipe).config.out_channels, height // factor, width // factor)


@dataclass(frozen=True)
class ModelFiles:
    """The files a pipeline is built from: the checkpoint (an A1111/Forge all-in-one file, a
    denoiser-only file of ComfyUI's diffusion_models/, or a diffusers folder) and, for families
    with parts (farm/families.py Part), each part's file by role, None for a part the checkpoint
    holds itself. It is the pipeline cache's key: other parts, another pipeline."""

    checkpoint: Path
    parts: tuple[tuple[str, Path | None], ...] = ()

    def part(self, role: str) -> Path | None:
        return dict(self.parts).get(role)

    def paths(self) -> list[Path]:
        return [self.checkpoint] + [p for _, p in self.parts if p is not None]


@dataclass(frozen=True)
class PartsFamily(WorkerFamily):
    """A family built from parts (Flux.1, Flux.2 [klein], SD3.5, Z-Image ...): a transformer
    denoiser from a single file (safetensors in bf16/fp16/fp8, or GGUF), text encoders and a VAE
    from their own files or from an all-in-one file. Each such family's module subclasses this and
    implements the methods below; the render path (worker/render.py) calls them.

    Conditioning: `encode` gives one prompt text's Conditioning (the text has no extra-network tags
    and no prompt-editing schedule; A1111 emphasis syntax may be in it: the module says in its
    docstring what it does with it). Positive and negative conditionings of one call need not have
    equal shapes; images whose conditionings differ in shape are rendered in separate calls."""

    denoiser: str = "transformer"
    ldm_text_encoders: Callable[[object], dict] | None = None  # SD's all-in-one writer only

    def load(self, files: ModelFiles, config_dir: Path, dtype) -> object:
        """The pipeline, on the CPU, weights in `dtype` (the compute dtype; a GGUF or fp8 file stays
        quantized, computing in `dtype`). Raises worker.safe_load.ModelLoadError (one line naming
        the file) for anything wrong with a file."""
        raise NotImplementedError

    def encode(self, pipe, text: str, clip_skip: int):
        """One prompt text -> worker.conditioning.Conditioning (embeds (1, L, D), pooled or None)."""
        raise NotImplementedError

    def pipeline_inputs(self, pipe, task, positive: list, negative: list) -> dict:
        """The pipeline call's conditioning and guidance arguments for images with these
        Conditionings (one per image) of `task` (cfg, distilled_cfg ...)."""
        raise NotImplementedError

    def latent_shape(self, pipe, width: int, height: int) -> tuple[int, int, int]:
        """(channels, height, width) of one image's starting noise, before any packing (the noise
        ComfyUI would draw for it)."""
        return (pipe.vae.config.latent_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)

    def pack_latents(self, pipe, noise):
        """Starting noise (B, C, H, W) as the pipeline's `latents` argument takes it."""
        return noise


# --- for the families' tiny test models ------------------------------------------------------

TINY_SEED = 0  # the tiny models' weights come from this torch seed: the same file on every run
# What the tiny UNets of SD1.5 and SDXL share: two levels, the second with cross-attention.
TINY_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=2,
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
)


def tiny_vae(**family_config):
    """The tiny VAE (4 latent channels, two levels) with a family's own settings (SDXL's scaling
    factor)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        **family_config,
    )


def give_layer_norms_biases(text_encoder, seed: int = 4) -> None:
    """Random-init LayerNorms have bias 0, so a tiny encoder's output (after its final LayerNorm)
    has a mean of exactly 0 per token: the emphasis "restore the mean" would then test nothing, and
    its sign would depend on the CPU's summation order. Real encoders have non-zero biases."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in text_encoder.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1 + 0.05)
