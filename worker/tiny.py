"""Tiny random-weight SD1.5 and SDXL models, written as real A1111-layout checkpoints.

Tests and `farm models make-tiny` use it to drive the real load path (single file + config folder)
in seconds on a CPU. The weights come from a fixed torch seed, so the file and its SHA-256 are the
same on every run (with the same torch/diffusers versions).

Layout written:
    <models_dir>/Stable-diffusion/<name>.safetensors   the checkpoint (about 15 MB, mostly the
                                                        49408 x 32 token embedding)
    <models_dir>/Stable-diffusion/<name>.config/       its diffusers config folder: the tiny
                                                        unet/vae/text_encoder configs, the SD1.5
                                                        scheduler and the real CLIP tokenizer
`make_tiny_sdxl` writes the SDXL twin (about 31 MB): two text encoders of different widths (32 and
64), as from_single_file tells SDXL's encoders apart by width (diffusers.md section 2).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from worker.ldm_layout import CLIP_PREFIX_SDXL, clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm
from worker.pipelines import SD15_CONFIG, SDXL_CONFIG, configs_dir

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
    _give_layer_norms_biases(text_encoder)
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


def _give_layer_norms_biases(text_encoder, seed: int = 4) -> None:
    """Random-init LayerNorms have bias 0, so a tiny encoder's output (after its final LayerNorm)
    has a mean of exactly 0 per token: the emphasis "restore the mean" would then test nothing, and
    its sign would depend on the CPU's summation order. Real encoders have non-zero biases."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in text_encoder.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1 + 0.05)


def write_checkpoint(pipe, path: Path) -> None:
    """Write a diffusers SD1.5 or SDXL pipeline as one A1111-layout .safetensors file."""
    from safetensors.torch import save_file

    state = {
        **unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config),
        **vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config),
    }
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL: CLIP-L, then OpenCLIP bigG
        state.update(clip_to_ldm(pipe.text_encoder.state_dict(), prefix=CLIP_PREFIX_SDXL))
        state.update(open_clip_to_ldm(pipe.text_encoder_2.state_dict()))
    else:
        state.update(clip_to_ldm(pipe.text_encoder.state_dict()))
    # contiguous copies: safetensors refuses shared or strided storage (the VAE's [:, :, None, None]).
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    # One metadata key only: safetensors writes metadata from a hash map, so with two keys their
    # order (and the file hash) changes from run to run.
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)  # a reader never sees a half-written checkpoint


def write_config_dir(pipe, config_dir: Path) -> None:
    """The diffusers config folder from_single_file needs for this architecture (no weights): the
    shipped family folder's index, scheduler and tokenizers, this model's own component configs."""
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    base = configs_dir() / (SDXL_CONFIG if sdxl else SD15_CONFIG)
    if config_dir.exists():
        shutil.rmtree(config_dir)
    config_dir.mkdir(parents=True)
    shutil.copy2(base / "model_index.json", config_dir / "model_index.json")
    for name in ("scheduler", "tokenizer", "tokenizer_2") if sdxl else ("scheduler", "tokenizer"):
        shutil.copytree(base / name, config_dir / name)
    for name in ("unet", "vae"):
        (config_dir / name).mkdir()
        getattr(pipe, name).save_config(str(config_dir / name))
    encoders = {"text_encoder": "CLIPTextModel"}
    if sdxl:
        encoders["text_encoder_2"] = "CLIPTextModelWithProjection"
    for name, architecture in encoders.items():
        (config_dir / name).mkdir()
        te_config = getattr(pipe, name).config.to_dict()
        te_config["architectures"] = [architecture]
        (config_dir / name / "config.json").write_text(json.dumps(te_config, indent=2, sort_keys=True) + "\n")


def make_tiny(models_dir: Path, name: str = "seedfarm-tiny", sdxl: bool = False) -> Path:
    """Build the tiny model and write it under models_dir/Stable-diffusion/. Returns the checkpoint."""
    target_dir = Path(models_dir) / "Stable-diffusion"
    target_dir.mkdir(parents=True, exist_ok=True)
    pipe = tiny_sdxl_pipeline() if sdxl else tiny_pipeline()
    checkpoint = target_dir / f"{name}.safetensors"
    write_config_dir(pipe, target_dir / f"{name}.config")
    write_checkpoint(pipe, checkpoint)
    return checkpoint


def make_tiny_sdxl(models_dir: Path, name: str = "seedfarm-tiny-xl") -> Path:
    """The tiny SDXL model under models_dir/Stable-diffusion/. Returns the checkpoint."""
    return make_tiny(models_dir, name, sdxl=True)


def tiny_sdxl_pipeline():
    """The in-memory tiny SDXL pipeline (CPU, fp32): the SDXL UNet wiring (text_time embedding,
    linear projections, 2 transformer layers deep), CLIP-L-like encoder of width 32, OpenCLIP-like
    encoder of width 64 with 10 layers (from_single_file's SDXL probe is `resblocks.9`)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    sdxl = configs_dir() / SDXL_CONFIG
    clip = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, vocab_size=49408,
                max_position_embeddings=77)
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
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=8 * 6 + 32,  # 6 size/crop numbers + pooled text (32)
            cross_attention_dim=32 + 64,  # both encoders' hidden states, concatenated
        )
        vae = AutoencoderKL(
            block_out_channels=[32, 64],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
            latent_channels=4,
            scaling_factor=0.13025,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3, **clip)
        )
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(hidden_size=64, intermediate_size=74, num_attention_heads=4, num_hidden_layers=10,
                           projection_dim=32, hidden_act="gelu", **clip)
        )
    _give_layer_norms_biases(text_encoder)
    _give_layer_norms_biases(text_encoder_2)
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


# --- tiny add-ons for the tiny models: LoRA (kohya format), embeddings, VAE ----------------------

def _save(state: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})
    return path


def make_tiny_lora(models_dir: Path, name: str, sdxl: bool = False, seed: int = 1, rank: int = 4) -> Path:
    """A kohya-format LoRA for the tiny model under models_dir/Lora/: every attention projection
    of the UNet (named as kohya names them: diffusers module names for SD1.5, LDM `input_blocks`
    names for SDXL) and of the text encoder(s) (`lora_te_`, or `lora_te1_`/`lora_te2_`)."""
    pipe = tiny_sdxl_pipeline() if sdxl else tiny_pipeline()
    targets: dict[str, torch.Tensor] = {}  # kohya module name -> the base weight it adapts
    unet = {k: v for k, v in pipe.unet.state_dict().items()
            if ".transformer_blocks." in k and k.endswith((".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight"))}
    if sdxl:
        unet = {k.removeprefix("model.diffusion_model."): v for k, v in unet_to_ldm(unet, pipe.unet.config).items()}
    for key, weight in unet.items():
        targets["lora_unet_" + key.removesuffix(".weight").replace(".", "_")] = weight
    encoders = [("lora_te1_", pipe.text_encoder), ("lora_te2_", pipe.text_encoder_2)] if sdxl else [("lora_te_", pipe.text_encoder)]
    for prefix, encoder in encoders:
        for key, weight in encoder.state_dict().items():
            if key.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight")):
                module = key.removesuffix(".weight")
                module = module if module.startswith("text_model.") else "text_model." + module
                targets[prefix + module.replace(".", "_")] = weight
    state = {}
    generator = torch.Generator().manual_seed(seed)
    for module, weight in targets.items():
        out_features, in_features = weight.shape
        state[f"{module}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator) * 0.3
        state[f"{module}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * 0.3
        state[f"{module}.alpha"] = torch.tensor(float(rank))
    return _save(state, Path(models_dir) / "Lora" / f"{name}.safetensors")


def tiny_embedding_vectors(sdxl: bool = False, vectors: int = 2, seed: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    parts = {"clip_l": torch.randn(vectors, 32, generator=generator)}
    if sdxl:
        parts["clip_g"] = torch.randn(vectors, 64, generator=generator)
    return parts


def make_tiny_embedding(models_dir: Path, name: str, layout: str = "safetensors", vectors: int = 2,
                        seed: int = 3) -> Path:
    """A textual-inversion embedding for the tiny models under models_dir/embeddings/, in one of
    A1111's layouts: "pt" (pickled string_to_param), "safetensors" (emb_params), "sdxl" (clip_l +
    clip_g)."""
    parts = tiny_embedding_vectors(layout == "sdxl", vectors, seed)
    folder = Path(models_dir) / "embeddings"
    if layout == "pt":
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.pt"
        torch.save({"string_to_param": {"*": parts["clip_l"]}, "name": name, "step": 1000}, path)
        return path
    if layout == "sdxl":
        return _save(parts, folder / f"{name}.safetensors")
    return _save({"emb_params": parts["clip_l"]}, folder / f"{name}.safetensors")


def make_tiny_vae(models_dir: Path, name: str, seed: int = 2) -> Path:
    """A VAE for the tiny models (same shape, other weights) under models_dir/VAE/, in A1111's VAE
    file layout (LDM names without the `first_stage_model.` prefix)."""
    from diffusers import AutoencoderKL

    reference = tiny_pipeline().vae
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL.from_config(reference.config)
    return _save(vae_to_ldm(vae.state_dict(), vae.config, prefix=""), Path(models_dir) / "VAE" / f"{name}.safetensors")


# --- tiny LyCORIS files (LoHa, LoKr) for the tiny models ------------------------------------------

def _kohya_targets(pipe, sdxl: bool, convs: bool) -> dict[str, torch.Tensor]:
    """kohya module name -> base weight: the modules make_tiny_lora adapts (attention projections of
    the UNet and text encoders, kohya-named the same way) and, with convs, some UNet convolutions
    too: every resnet's 3x3 conv1, the 1x1 conv_shortcut and proj_in (a 1x1 conv in SD1.5, a
    Linear in SDXL)."""
    ends = (".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")
    if convs:
        ends += (".conv1.weight", ".conv_shortcut.weight", ".proj_in.weight")
    unet = {k: v for k, v in pipe.unet.state_dict().items()
            if k.endswith(ends) and (".transformer_blocks." in k or not k.endswith(ends[:4]))}
    if sdxl:
        unet = {k.removeprefix("model.diffusion_model."): v for k, v in unet_to_ldm(unet, pipe.unet.config).items()}
    targets = {"lora_unet_" + k.removesuffix(".weight").replace(".", "_"): v for k, v in unet.items()}
    encoders = [("lora_te1_", pipe.text_encoder), ("lora_te2_", pipe.text_encoder_2)] if sdxl else [("lora_te_", pipe.text_encoder)]
    for prefix, encoder in encoders:
        for key, weight in encoder.state_dict().items():
            if key.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight")):
                module = key.removesuffix(".weight")
                module = module if module.startswith("text_model.") else "text_model." + module
                targets[prefix + module.replace(".", "_")] = weight
    return targets


def _split_dim(n: int) -> tuple[int, int]:
    """n = a * b with a <= b as close as possible (LyCORIS factorises LoKr dimensions so)."""
    a = max(d for d in range(1, int(n**0.5) + 1) if n % d == 0)
    return a, n // a


def _lycoris_targets(sdxl: bool, seed: int):
    """For the LyCORIS makers: a seeded source of small random tensors, and the tiny model's kohya
    modules as (name, out, in, kernel (empty for linear), kernel taps)."""
    pipe = tiny_sdxl_pipeline() if sdxl else tiny_pipeline()
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator) * 0.5

    targets = []
    for module, weight in _kohya_targets(pipe, sdxl, convs=True).items():
        out_dim, in_dim, *kernel = weight.shape
        targets.append((module, out_dim, in_dim, kernel, kernel[0] * kernel[1] if kernel else 1))
    return randn, targets


def make_tiny_loha(models_dir: Path, name: str, sdxl: bool = False, seed: int = 1, rank: int = 4,
                   tucker: bool = True, locon_convs: bool = False) -> Path:
    """A LyCORIS LoHa file (kohya names, as make_tiny_lora) for the tiny model under
    models_dir/LyCORIS/: hada_w1_a (out, r), hada_w1_b (r, in*kh*kw), the same for w2, and alpha =
    rank/2 (scale 0.5). With tucker, 3x3 convs are Tucker-decomposed instead: hada_t1/t2 (r, r, 3, 3),
    a (r, out), b (r, in). With locon_convs the convolutions are plain LoCon modules
    (lora_up/lora_down) instead, a file that mixes module kinds."""
    randn, targets = _lycoris_targets(sdxl, seed)
    state = {}
    for module, out_dim, in_dim, kernel, taps in targets:
        if kernel and locon_convs:
            state[f"{module}.lora_down.weight"] = randn(rank, in_dim, *kernel)
            state[f"{module}.lora_up.weight"] = randn(out_dim, rank, 1, 1)
        else:
            for side in (1, 2):
                if tucker and taps > 1:
                    state[f"{module}.hada_t{side}"] = randn(rank, rank, *kernel)
                    state[f"{module}.hada_w{side}_a"] = randn(rank, out_dim)
                    state[f"{module}.hada_w{side}_b"] = randn(rank, in_dim)
                else:
                    state[f"{module}.hada_w{side}_a"] = randn(out_dim, rank)
                    state[f"{module}.hada_w{side}_b"] = randn(rank, in_dim * taps)
        state[f"{module}.alpha"] = torch.tensor(rank / 2)
    return _save(state, Path(models_dir) / "LyCORIS" / f"{name}.safetensors")


def make_tiny_lokr(models_dir: Path, name: str, sdxl: bool = False, seed: int = 1, rank: int = 2,
                   factor_w1: bool = False, factor_w2: bool = True, tucker: bool = False) -> Path:
    """A LyCORIS LoKr file (kohya names, as make_tiny_lora) for the tiny model under
    models_dir/LyCORIS/. Each weight (out, in, ...) = kron(w1 (a, c), w2 (b, d, ...)) with
    out = a*b, in = c*d. w1 is lokr_w1, or lokr_w1_a (a, r) @ lokr_w1_b (r, c) with factor_w1; w2 is
    lokr_w2 (b, d, kh, kw) without factor_w2, else lokr_w2_a (b, r) @ lokr_w2_b (r, d*kh*kw), or
    with tucker (3x3 convs) lokr_t2 (r, r, 3, 3), lokr_w2_a (r, b), lokr_w2_b (r, d). alpha = rank/2:
    scale 0.5 where a side is factorised, 1 where both are full (LyCORIS/A1111)."""
    randn, targets = _lycoris_targets(sdxl, seed)
    state = {}
    for module, out_dim, in_dim, kernel, taps in targets:
        (a, b), (c, d) = _split_dim(out_dim), _split_dim(in_dim)
        if factor_w1:
            state[f"{module}.lokr_w1_a"] = randn(a, rank)
            state[f"{module}.lokr_w1_b"] = randn(rank, c)
        else:
            state[f"{module}.lokr_w1"] = randn(a, c)
        if not factor_w2:
            state[f"{module}.lokr_w2"] = randn(b, d, *kernel)
        elif tucker and taps > 1:
            state[f"{module}.lokr_t2"] = randn(rank, rank, *kernel)
            state[f"{module}.lokr_w2_a"] = randn(rank, b)
            state[f"{module}.lokr_w2_b"] = randn(rank, d)
        else:
            state[f"{module}.lokr_w2_a"] = randn(b, rank)
            state[f"{module}.lokr_w2_b"] = randn(rank, d * taps)
        state[f"{module}.alpha"] = torch.tensor(rank / 2)
    return _save(state, Path(models_dir) / "LyCORIS" / f"{name}.safetensors")
