"""SD3.5 Large and Medium: an MMDiT denoiser (SD3Transformer2DModel; Medium's MMDiT-X has a second
attention in its first 13 blocks), three text encoders (CLIP-L and CLIP-G, both
CLIPTextModelWithProjection, and T5-XXL) and the SD3 VAE (16 latent channels, scaling 1.5305,
shift 0.0609), rendered with diffusers' StableDiffusion3Pipeline.

Files (what `load` reads):
- the denoiser: a denoiser-only file (ComfyUI's diffusion_models/: Stability's MMDiT names,
  `joint_blocks.N.x_block...`), or an all-in-one file (Stability's sd3.5_large.safetensors: the
  MMDiT under `model.diffusion_model.`, the VAE under `first_stage_model.`; ComfyUI's
  `*_incl_clips*` files also hold the encoders under `text_encoders.clip_l.transformer.`,
  `text_encoders.clip_g.transformer.`, `text_encoders.t5xxl.transformer.`). Loaded with
  `SD3Transformer2DModel.from_single_file` and the config folder's transformer/config.json.
  - GGUF (ComfyUI-GGUF's files, architecture "sd3"): stays quantized, dequantized per layer to the
    compute dtype (diffusers' GGUFQuantizationConfig).
  - fp8 safetensors (float8_e4m3fn or e5m2): loaded, then kept in fp8 in memory with diffusers'
    layerwise casting: each Linear/Conv weight is stored in the file's fp8 type and cast to the
    compute dtype just for its layer's forward (norms, embeddings and positional tables stay in the
    compute dtype, diffusers' default skip list). ComfyUI's "scaled fp8" files (a `scale_weight`
    per weight) are multiplied out first; the products are stored back in fp8.
- the text encoders: each its own file in the transformers key layout (ComfyUI's clip_l,
  clip_g, t5xxl_fp16 / t5xxl_fp8_e4m3fn[_scaled]) with its config from `<file stem>.config.json`
  beside it, else the config folder's text_encoder/, text_encoder_2/, text_encoder_3/; or from the
  all-in-one file. An fp8 encoder file is upcast to the compute dtype at load (scaled fp8
  multiplied out). A CLIP file without `text_projection.weight` gets an identity projection.
  Tokenizers: configs/sd15/tokenizer (CLIP-L), configs/sdxl/tokenizer_2 (CLIP-G, pad "!"),
  configs/tokenizers/t5.
- the VAE: its own file (LDM layout, with or without `first_stage_model.`, or diffusers layout),
  config from `<stem>.config.json` beside it, else the config folder's vae/; or the all-in-one file.

Conditioning (`encode`), matching StableDiffusion3Pipeline.encode_prompt exactly for a prompt
without weights: CLIP-L and CLIP-G each see one 77-token window (BOS, up to 75 tokens, EOS,
padding: a longer prompt is cut after 75 tokens, as diffusers cuts it; A1111's 75-token chunks are
not done here); their hidden states are joined per token (768 + 1280), zero-padded to T5's width,
and followed by T5's 256 tokens (EOS then padding; a longer prompt is cut, as diffusers does).
Pooled: both CLIPs' projected pooled outputs, joined.
- Clip skip: A1111 conditions SD3 on CLIP's penultimate layer without the final LayerNorm and has
  no clip skip for it; Forge has one (hidden layer -max(clip skip, 1), no final norm), under which
  its default 1 is the last layer rather than the penultimate SD3 was trained on. Here clip skip 1
  is the penultimate layer (A1111's, ComfyUI's, diffusers' default) and clip skip N layer -(N+1),
  the convention of SDXL in A1111 (diffusers' clip_skip = N - 1), on both CLIPs.
- Emphasis (A1111 "Original"): on each CLIP, each token's hidden state is multiplied by its weight,
  then the window is rescaled to its unweighted mean (worker.conditioning._emphasis). On T5 the
  same multiply-and-restore-mean is applied to the encoder's output over its 256 tokens, as Forge
  does for T5 (A1111 parses T5 weights but does not apply them). The pooled vectors are unweighted.
  Text is tokenized piece by piece (each weighted span on its own), so a weighted prompt's tokens
  may differ slightly from the same words unweighted, as in A1111.
- The negative prompt is encoded like any text, also when empty (Forge zeroes an empty negative;
  diffusers and A1111 encode ""): cfg is real classifier-free guidance, cfg 1 skips the negative.

LoRAs: diffusers/ai-toolkit files (`transformer.transformer_blocks.N...lora_A/B`) load as they are;
kohya (`lora_unet_joint_blocks_N_...`) and ComfyUI (`diffusion_model.joint_blocks.N....`) files
in the MMDiT's own names are converted here (`convert_lora`: a fused qkv is split into q, k, v with
the shared down matrix; alpha/rank is folded into the up matrix).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from farm.families import BY_NAME, DENOISER_PREFIX
from farm.model_files import ModelFileError, read_tensor_shapes, weights_precision
from worker import tiny_parts
from worker.families.base import TINY_SEED, ModelFiles, PartsFamily
from worker.safe_load import ModelLoadError
from worker.tiny_parts import save_safetensors as _save

LARGE = BY_NAME["SD3.5 Large"]
MEDIUM = BY_NAME["SD3.5 Medium"]

CLIP_TOKENS = 77  # BOS + 75 + EOS, StableDiffusion3Pipeline's tokenizer_max_length
T5_TOKENS = 256  # StableDiffusion3Pipeline's default max_sequence_length
VAE_PREFIXES = ("first_stage_model.", "vae.")
# part role -> (pipeline text encoder attribute, config subfolder, prefix inside an all-in-one file)
ENCODERS = {
    "clip_l": ("text_encoder", "text_encoder", "text_encoders.clip_l."),
    "clip_g": ("text_encoder_2", "text_encoder_2", "text_encoders.clip_g."),
    "t5xxl": ("text_encoder_3", "text_encoder_3", "text_encoders.t5xxl."),
}
CLIP_VOCAB = 49408
T5_VOCAB = 32100  # the T5 tokenizer's length (the model's embedding has 32128 rows)
GGUF_ARCH = "sd3"  # general.architecture of ComfyUI-GGUF's SD3/SD3.5 files


# ---- Stability's MMDiT names <-> diffusers' SD3Transformer2DModel --------------------------------

def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """SD3's final AdaLN projections are (shift, scale) in Stability's files and (scale, shift) in
    diffusers (diffusers' swap_scale_shift); swapping is its own inverse."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def original_modules(num_layers: int, dual_attention_layers=(), qk_norm: bool = True) -> dict:
    """Stability module name -> ([diffusers module names], swapped): the diffusers modules whose
    weights, concatenated along dim 0 in order (and halves swapped when `swapped`), are the
    Stability module's weight. The one table both directions of conversion (and LoRAs) read."""
    table = {
        "x_embedder.proj": (["pos_embed.proj"], False),
        "t_embedder.mlp.0": (["time_text_embed.timestep_embedder.linear_1"], False),
        "t_embedder.mlp.2": (["time_text_embed.timestep_embedder.linear_2"], False),
        "context_embedder": (["context_embedder"], False),
        "y_embedder.mlp.0": (["time_text_embed.text_embedder.linear_1"], False),
        "y_embedder.mlp.2": (["time_text_embed.text_embedder.linear_2"], False),
        "final_layer.linear": (["proj_out"], False),
        "final_layer.adaLN_modulation.1": (["norm_out.linear"], True),
    }
    for i in range(num_layers):
        last = i == num_layers - 1
        b, d = f"joint_blocks.{i}.", f"transformer_blocks.{i}."
        table[b + "x_block.attn.qkv"] = ([d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"], False)
        table[b + "context_block.attn.qkv"] = ([d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"], False)
        table[b + "x_block.attn.proj"] = ([d + "attn.to_out.0"], False)
        table[b + "x_block.adaLN_modulation.1"] = ([d + "norm1.linear"], False)
        table[b + "context_block.adaLN_modulation.1"] = ([d + "norm1_context.linear"], last)
        table[b + "x_block.mlp.fc1"] = ([d + "ff.net.0.proj"], False)
        table[b + "x_block.mlp.fc2"] = ([d + "ff.net.2"], False)
        if qk_norm:
            table[b + "x_block.attn.ln_q"] = ([d + "attn.norm_q"], False)
            table[b + "x_block.attn.ln_k"] = ([d + "attn.norm_k"], False)
            table[b + "context_block.attn.ln_q"] = ([d + "attn.norm_added_q"], False)
            table[b + "context_block.attn.ln_k"] = ([d + "attn.norm_added_k"], False)
        if not last:
            table[b + "context_block.attn.proj"] = ([d + "attn.to_add_out"], False)
            table[b + "context_block.mlp.fc1"] = ([d + "ff_context.net.0.proj"], False)
            table[b + "context_block.mlp.fc2"] = ([d + "ff_context.net.2"], False)
        if i in dual_attention_layers:
            table[b + "x_block.attn2.qkv"] = ([d + "attn2.to_q", d + "attn2.to_k", d + "attn2.to_v"], False)
            table[b + "x_block.attn2.proj"] = ([d + "attn2.to_out.0"], False)
            if qk_norm:
                table[b + "x_block.attn2.ln_q"] = ([d + "attn2.norm_q"], False)
                table[b + "x_block.attn2.ln_k"] = ([d + "attn2.norm_k"], False)
    return table


def _table_for(config) -> dict:
    return original_modules(config["num_layers"], tuple(config.get("dual_attention_layers") or ()),
                            bool(config.get("qk_norm")))


def transformer_to_original(state: dict, config, prefix: str = "") -> dict:
    """An SD3Transformer2DModel state dict in Stability's MMDiT names (the inverse of diffusers'
    convert_sd3_transformer_checkpoint_to_diffusers)."""
    out = {prefix + "pos_embed": state["pos_embed.pos_embed"]}
    for original, (modules, swapped) in _table_for(config).items():
        for param in ("weight", "bias"):
            parts = [state.get(f"{m}.{param}") for m in modules]
            if any(p is None for p in parts):
                continue
            value = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
            out[f"{prefix}{original}.{param}"] = _swap_halves(value) if swapped else value
    missing = set(state) - {"pos_embed.pos_embed"} - {f"{m}.{p}" for ms, _ in _table_for(config).values()
                                                     for m in ms for p in ("weight", "bias")}
    if missing:
        raise KeyError(f"unmapped transformer weights: {sorted(missing)[:3]}")
    return out


# ---- reading files -------------------------------------------------------------------------------

def _read(path: Path, what: str) -> dict:
    from safetensors.torch import load_file

    try:
        read_tensor_shapes(path)  # a truncated or foreign file says so in one line
        return load_file(str(path))
    except ModelFileError as e:
        raise ModelLoadError(str(e)) from None
    except Exception as e:
        raise ModelLoadError(f"{path.name}: cannot read the {what} ({(str(e).splitlines() or [''])[0][:200]})") from None


def _unscale(state: dict) -> dict:
    """ComfyUI's "scaled fp8" files hold each weight as fp8 * `<module>.scale_weight`: multiply it
    out (in fp32) and drop the scale tensors (and `scale_input`, `scaled_fp8` markers)."""
    scales = {k.removesuffix(".scale_weight"): v for k, v in state.items() if k.endswith(".scale_weight")}
    out = {}
    for key, value in state.items():
        if key.endswith((".scale_weight", ".scale_input")) or key == "scaled_fp8":
            continue
        module = key.removesuffix(".weight")
        if key.endswith(".weight") and module in scales:
            value = value.to(torch.float32) * scales[module].to(torch.float32)
        out[key] = value
    return out


def _is_fp8(dtype: torch.dtype) -> bool:
    return dtype in (torch.float8_e4m3fn, torch.float8_e5m2)


def _build(model_factory, state: dict, name: str, dtype: torch.dtype):
    """A model from its config with no weights allocated, then the file's tensors assigned."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = model_factory()
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        raise ModelLoadError(f"{name}: unexpected weights (e.g. {result.unexpected_keys[0]}); is it the right kind of file?")
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise ModelLoadError(f"{name}: {len(missing)} weights missing (e.g. {missing[0]}); is it the right kind of file?")
    if any(p.dtype != dtype for p in model.parameters()):
        model = model.to(dtype)
    return model.eval()


def _json_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path.name}: cannot read the config ({e})") from None


def _part_state(files: ModelFiles, role: str, checkpoint_state, prefixes: tuple[str, ...]) -> tuple[dict, str, Path | None]:
    """(tensors, name for messages, own file or None) of a part: its own file, or the all-in-one
    file's tensors under one of `prefixes` (prefix removed)."""
    path = files.part(role)
    if path is not None:
        return _read(Path(path), role), Path(path).name, Path(path)
    state = checkpoint_state()
    for prefix in prefixes:
        inside = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if inside:
            return inside, f"{files.checkpoint.name} ({prefix}*)", None
    raise ModelLoadError(f"{files.checkpoint.name}: holds no {role} and no {role} file was given")


def _text_encoder(role: str, state: dict, name: str, own: Path | None, config_dir: Path, dtype):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    _, subfolder, _ = ENCODERS[role]
    beside = own.with_name(own.stem + ".config.json") if own is not None else None
    config_path = beside if beside is not None and beside.is_file() else config_dir / subfolder / "config.json"
    config = _json_config(config_path)
    state = _unscale(state)
    if role == "t5xxl":
        state = {k.removeprefix("transformer."): v for k, v in state.items()}
        if "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
            state["shared.weight"] = state["encoder.embed_tokens.weight"]
        state.setdefault("encoder.embed_tokens.weight", state.get("shared.weight"))
        state = {k: v for k, v in state.items() if v is not None}
        cfg = T5Config.from_dict(config)
        model = _build(lambda: T5EncoderModel(cfg), state, name, dtype)
    else:
        state = {k.removeprefix("transformer."): v for k, v in state.items()}
        state = {k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k: v
                 for k, v in state.items()}
        state.pop("text_model.embeddings.position_ids", None)
        state.pop("logit_scale", None)
        cfg = CLIPTextConfig.from_dict(config)
        if "text_projection.weight" not in state:  # a CLIP-L made for Flux: no projection
            state["text_projection.weight"] = torch.eye(cfg.projection_dim, cfg.hidden_size)
        model = _build(lambda: CLIPTextModelWithProjection(cfg), state, name, dtype)
    return model


def _vae(state: dict, name: str, own: Path | None, config_dir: Path, dtype):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    beside = own.with_name(own.stem + ".config.json") if own is not None else None
    config_path = beside if beside is not None and beside.is_file() else config_dir / "vae" / "config.json"
    config = _json_config(config_path)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    for prefix in VAE_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    if not any(k.startswith("encoder.down_blocks.") for k in state):  # LDM layout
        state = convert_ldm_vae_checkpoint(state, config)
    return _build(lambda: AutoencoderKL.from_config(config), state, name, dtype)


def _transformer(path: Path, config_dir: Path, dtype):
    from diffusers import SD3Transformer2DModel

    common = dict(config=str(config_dir), subfolder="transformer", torch_dtype=dtype, local_files_only=True)
    if path.suffix.lower() == ".gguf":
        from diffusers import GGUFQuantizationConfig

        return SD3Transformer2DModel.from_single_file(
            str(path), quantization_config=GGUFQuantizationConfig(compute_dtype=dtype), **common)
    shapes = read_tensor_shapes(path)
    denoiser = {k: v for k, v in shapes.items() if k.startswith(DENOISER_PREFIX)} or shapes
    precision = weights_precision(denoiser)
    state = _read(path, "checkpoint")
    if any(k.startswith(DENOISER_PREFIX) for k in state):  # an all-in-one file: the denoiser only
        state = {k: v for k, v in state.items() if k.startswith(DENOISER_PREFIX)}
    state = _unscale(state)
    model = SD3Transformer2DModel.from_single_file(state, **common)
    if precision.startswith("fp8"):
        storage = torch.float8_e4m3fn if precision == "fp8_e4m3fn" else torch.float8_e5m2
        model.enable_layerwise_casting(storage_dtype=storage, compute_dtype=dtype)
    return model


def tokenizers():
    """(CLIP-L, CLIP-G, T5) tokenizers from the shipped configs, checked for their real length
    (transformers 5 builds a 3-token placeholder when the files are missing)."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    from worker.pipelines import configs_dir

    root = configs_dir()
    out = []
    for cls, folder, size in ((CLIPTokenizer, root / "sd15" / "tokenizer", CLIP_VOCAB),
                              (CLIPTokenizer, root / "sdxl" / "tokenizer_2", CLIP_VOCAB),
                              (T5TokenizerFast, root / "tokenizers" / "t5", T5_VOCAB)):
        tokenizer = cls.from_pretrained(str(folder), local_files_only=True)
        if len(tokenizer) != size:
            raise ModelLoadError(f"tokenizer from {folder} has {len(tokenizer)} tokens, expected {size}; "
                                 "the tokenizer files are missing or broken")
        out.append(tokenizer)
    return tuple(out)


def _pipeline(transformer, vae, encoders: dict, scheduler):
    from diffusers import StableDiffusion3Pipeline

    tokenizer, tokenizer_2, tokenizer_3 = tokenizers()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae,
        text_encoder=encoders["clip_l"], tokenizer=tokenizer,
        text_encoder_2=encoders["clip_g"], tokenizer_2=tokenizer_2,
        text_encoder_3=encoders["t5xxl"], tokenizer_3=tokenizer_3,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---- conditioning ----------------------------------------------------------------------------------

def _pieces(text: str) -> list[tuple[str, float]]:
    from worker.prompt_syntax import parse_attention

    return [(piece, weight) for piece, weight in parse_attention(text) if not (piece == "BREAK" and weight == -1)]


def _tokens(tokenizer, pieces) -> tuple[list[int], list[float]]:
    tokens, weights = [], []
    for piece, weight in pieces:
        ids = tokenizer(piece, add_special_tokens=False, truncation=False, verbose=False).input_ids
        tokens += ids
        weights += [weight] * len(ids)
    return tokens, weights


def _encode_clip(tokenizer, encoder, pieces, clip_skip: int):
    from worker.conditioning import ConditioningError, _emphasis

    tokens, weights = _tokens(tokenizer, pieces)
    tokens, weights = tokens[:CLIP_TOKENS - 2], weights[:CLIP_TOKENS - 2]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id] + tokens + [tokenizer.eos_token_id]
    ids += [pad] * (CLIP_TOKENS - len(ids))
    weights = [1.0] + weights + [1.0] * (CLIP_TOKENS - 1 - len(weights))
    out = encoder(torch.tensor([ids], device=encoder.device), output_hidden_states=True)
    layers = len(out.hidden_states) - 1
    if clip_skip + 1 > layers:
        raise ConditioningError(f"clip skip {clip_skip} is more than the text encoder's {layers} layers allow")
    return _emphasis(out.hidden_states[-(clip_skip + 1)], weights), out[0]


def _encode_t5(tokenizer, encoder, pieces):
    from worker.conditioning import _emphasis

    tokens, weights = _tokens(tokenizer, pieces)
    tokens, weights = tokens[:T5_TOKENS - 1], weights[:T5_TOKENS - 1]
    ids = tokens + [tokenizer.eos_token_id]
    ids += [tokenizer.pad_token_id] * (T5_TOKENS - len(ids))
    weights = weights + [1.0] * (T5_TOKENS - len(weights))
    z = encoder(torch.tensor([ids], device=encoder.device))[0]
    return _emphasis(z, weights)


@dataclass(frozen=True)
class SD35Family(PartsFamily):
    def load(self, files: ModelFiles, config_dir: Path, dtype):
        from diffusers import FlowMatchEulerDiscreteScheduler

        from worker.pipelines import _quiet

        _quiet()
        checkpoint = files.checkpoint
        cache: dict = {}

        def checkpoint_state():
            if "state" not in cache:
                if checkpoint.suffix.lower() == ".gguf":
                    cache["state"] = {}
                else:
                    cache["state"] = _read(checkpoint, "checkpoint")
            return cache["state"]

        transformer = _transformer(checkpoint, config_dir, dtype)
        encoders = {}
        for role, (_, _, prefix) in ENCODERS.items():
            state, name, own = _part_state(files, role, checkpoint_state, (prefix,))
            encoders[role] = _text_encoder(role, state, name, own, config_dir, dtype)
        state, name, own = _part_state(files, "vae", checkpoint_state, VAE_PREFIXES)
        vae = _vae(state, name, own, config_dir, dtype)
        cache.clear()
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(config_dir), subfolder="scheduler",
                                                                    local_files_only=True)
        return _pipeline(transformer, vae, encoders, scheduler)

    @torch.inference_mode()
    def encode(self, pipe, text: str, clip_skip: int):
        from worker.conditioning import Conditioning

        pieces = _pieces(text)
        l_embeds, l_pooled = _encode_clip(pipe.tokenizer, pipe.text_encoder, pieces, clip_skip)
        g_embeds, g_pooled = _encode_clip(pipe.tokenizer_2, pipe.text_encoder_2, pieces, clip_skip)
        t5 = _encode_t5(pipe.tokenizer_3, pipe.text_encoder_3, pieces)
        clip = torch.cat([l_embeds, g_embeds], dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        dtype = getattr(pipe, "seedfarm_dtype", None) or pipe.transformer.dtype
        embeds = torch.cat([clip, t5], dim=-2).to(dtype)
        return Conditioning(embeds, torch.cat([l_pooled, g_pooled], dim=-1).to(dtype))

    def pipeline_inputs(self, pipe, task, positive: list, negative: list) -> dict:
        return dict(
            prompt_embeds=torch.cat([c.embeds for c in positive]),
            pooled_prompt_embeds=torch.cat([c.pooled for c in positive]),
            negative_prompt_embeds=torch.cat([c.embeds for c in negative]),
            negative_pooled_prompt_embeds=torch.cat([c.pooled for c in negative]),
            guidance_scale=task.cfg,  # real CFG; 1 (or less) skips the negative pass
        )

    def convert_lora(self, pipe, state: dict) -> dict:
        """A LoRA in the MMDiT's own names (kohya `lora_unet_joint_blocks_0_x_block_attn_qkv`,
        ComfyUI `diffusion_model.joint_blocks.0.x_block.attn.qkv`) -> diffusers' peft names
        (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`); other files unchanged."""
        return lora_to_diffusers(state, dict(pipe.transformer.config))


def lora_to_diffusers(state: dict, config) -> dict:
    downs = [k for k in state if k.endswith((".lora_down.weight", ".lora_A.weight"))]
    if not any(k.startswith(("lora_unet_", "diffusion_model.", "model.diffusion_model.")) for k in downs):
        return state
    table = _table_for(config)
    by_name = {}
    for original, entry in table.items():
        by_name["lora_unet_" + original.replace(".", "_")] = entry
        by_name["diffusion_model." + original] = entry
        by_name["model.diffusion_model." + original] = entry
    out = {}
    for down_key in downs:
        module, _, kind = down_key.rpartition(".lora_")
        kind = kind.removesuffix(".weight")  # down / A
        up_key = f"{module}.lora_{'up' if kind == 'down' else 'B'}.weight"
        if module not in by_name:
            raise ModelLoadError(f"unknown SD3.5 LoRA module '{module}'")
        modules, swapped = by_name[module]
        down, up = state[down_key], state[up_key]
        alpha = state.get(f"{module}.alpha")
        if alpha is not None:
            up = up * (float(alpha) / down.shape[0])
        if swapped:
            up = _swap_halves(up)
        for target, part in zip(modules, up.chunk(len(modules), dim=0)):
            out[f"transformer.{target}.lora_A.weight"] = down
            out[f"transformer.{target}.lora_B.weight"] = part.contiguous()
    return out


# ---- tiny models ---------------------------------------------------------------------------------

def tiny_configs(variant: str = "medium") -> dict:
    """The tiny models' configs: a 32-wide MMDiT (Large: 38 blocks, as the real one, so that
    `joint_blocks.37.*` recognises it; Medium: 2 blocks, the first with MMDiT-X's second attention),
    and the tiny parts every family shares (worker/tiny_parts.py: CLIP-L 32 and CLIP-G 64 wide, T5
    128 wide, real vocabularies, an 8x SD3 VAE)."""
    if variant not in ("large", "medium"):
        raise ValueError(f"variant must be 'large' or 'medium', not {variant!r}")
    transformer = dict(
        sample_size=32, patch_size=2, in_channels=16, out_channels=16,
        num_layers=38 if variant == "large" else 2,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=128, caption_projection_dim=32,
        pooled_projection_dim=96, pos_embed_max_size=32, qk_norm="rms_norm",
        dual_attention_layers=[] if variant == "large" else [0],
    )
    return dict(
        transformer=transformer,
        scheduler=dict(num_train_timesteps=1000, shift=3.0),
    )


def tiny_pipeline(variant: str = "medium"):
    """The tiny SD3.5 pipeline (CPU, fp32) that write_tiny writes. Same seed -> same weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    configs = tiny_configs(variant)
    encoders = {"clip_l": tiny_parts.clip("clip_l"), "clip_g": tiny_parts.clip("clip_g"), "t5xxl": tiny_parts.t5xxl()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        transformer = SD3Transformer2DModel(**configs["transformer"])
        # diffusers zero-initialises some projections: give every weight a small random value so
        # that each part of the model matters to the image
        with torch.no_grad():
            for p in transformer.parameters():
                if p.dim() >= 2 and p.abs().max() == 0:
                    p.normal_(0, 0.05)
    transformer.eval()
    vae = tiny_parts.vae("sd3")
    scheduler = FlowMatchEulerDiscreteScheduler(**configs["scheduler"])
    pipe = _pipeline(transformer, vae, encoders, scheduler)
    pipe.seedfarm_family = "SD3.5 Large" if variant == "large" else "SD3.5 Medium"
    return pipe


def _write_config_dir(pipe, folder: Path) -> Path:
    """`<stem>.config/` beside a tiny file: model_index.json, scheduler, transformer, vae and the
    text encoders' configs (the tokenizers come from the shipped configs)."""
    import shutil

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    index = {"_class_name": "StableDiffusion3Pipeline", "_diffusers_version": "0.42.1",
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "transformer": ["diffusers", "SD3Transformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
             "text_encoder_3": ["transformers", "T5EncoderModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
             "tokenizer_3": ["transformers", "T5TokenizerFast"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    for name in ("scheduler", "transformer", "vae"):
        (folder / name).mkdir()
        getattr(pipe, name).save_config(str(folder / name))
    for role, (attr, subfolder, _) in ENCODERS.items():
        (folder / subfolder).mkdir()
        (folder / subfolder / "config.json").write_text(_encoder_config(getattr(pipe, attr)))
    return folder


def _encoder_config(encoder) -> str:
    config = encoder.config.to_dict()
    config["architectures"] = [type(encoder).__name__]
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def write_tiny(models_dir: Path, variant: str = "medium", name: str | None = None, precision: str = "fp32",
               fp8: bool = True, gguf: bool = True, all_in_one: bool = True) -> dict:
    """The tiny SD3.5 model in ComfyUI's folders, each file in its users' layout:
        diffusion_models/<name>.safetensors (+ _fp8_e4m3fn, and .gguf Q8_0), each with <stem>.config/
        text_encoders/clip_l.safetensors, clip_g.safetensors, t5xxl_fp16.safetensors (+ .config.json)
        vae/sd35_vae.safetensors (LDM layout, + .config.json)
        checkpoints/<name>_aio.safetensors (MMDiT, VAE and encoders under their prefixes) + .config/
    `precision`: fp32 or bf16 for the denoiser file. Returns role -> path ("diffusion_model", "fp8",
    "gguf", "checkpoint", "clip_l", "clip_g", "t5xxl", "vae"). The encoder and VAE files are shared
    by both variants (same seed, same configs)."""
    models_dir = Path(models_dir)
    name = name or f"tiny-sd35-{variant}"
    pipe = tiny_pipeline(variant)
    config = dict(pipe.transformer.config)
    original = transformer_to_original(pipe.transformer.state_dict(), config)
    out = {}
    folder = models_dir / "diffusion_models"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    out["diffusion_model"] = _save({k: v.to(dtype) for k, v in original.items()}, folder / f"{name}.safetensors")
    _write_config_dir(pipe, folder / f"{name}.config")
    if fp8:
        state = {k: v.to(torch.float8_e4m3fn) if v.dim() >= 2 and k != "pos_embed" else v.to(torch.bfloat16)
                 for k, v in original.items()}
        out["fp8"] = _save(state, folder / f"{name}_fp8_e4m3fn.safetensors")
        _write_config_dir(pipe, folder / f"{name}_fp8_e4m3fn.config")
    if gguf:
        out["gguf"] = tiny_parts.write_gguf(original, folder / f"{name}-Q8_0.gguf", GGUF_ARCH)
        _write_config_dir(pipe, folder / f"{name}-Q8_0.config")
    for role in ("clip_l", "clip_g", "t5xxl"):
        out[role] = tiny_parts.write_part(models_dir, role)
    vae_state = tiny_parts.part_tensors("sd3")
    out["vae"] = tiny_parts.write_part(models_dir, "sd3")
    if all_in_one:
        state = {DENOISER_PREFIX + k: v for k, v in original.items()}
        state.update({"first_stage_model." + k: v for k, v in vae_state.items()})
        for role, (_, _, prefix) in ENCODERS.items():
            state.update({f"{prefix}transformer.{k}": v for k, v in tiny_parts.part_tensors(role).items()})
        checkpoints = models_dir / "checkpoints"
        out["checkpoint"] = _save(state, checkpoints / f"{name}_aio.safetensors")
        _write_config_dir(pipe, checkpoints / f"{name}_aio.config")
    return out


def write_tiny_lora(models_dir: Path, name: str, variant: str = "medium", layout: str = "kohya",
                    seed: int = 1, rank: int = 4) -> Path:
    """A LoRA for the tiny model under models_dir/loras/: every attention projection of the MMDiT.
    layout "kohya": `lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down/lora_up/alpha` (Stability's
    module names, qkv fused); "comfyui": the same as `diffusion_model.joint_blocks.0...`;
    "diffusers": ai-toolkit's `transformer.transformer_blocks.0.attn.to_q.lora_A/lora_B`."""
    config = tiny_configs(variant)["transformer"]
    width = config["attention_head_dim"] * config["num_attention_heads"]
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for original, (modules, _) in _table_for(config).items():
        if not original.endswith((".qkv", ".attn.proj", ".attn2.proj")):
            continue
        down = torch.randn(rank, width, generator=generator) * 0.3
        up = torch.randn(width * len(modules), rank, generator=generator) * 0.3
        if layout == "diffusers":
            for target, part in zip(modules, up.chunk(len(modules))):
                state[f"transformer.{target}.lora_A.weight"] = down
                state[f"transformer.{target}.lora_B.weight"] = part
            continue
        module = "lora_unet_" + original.replace(".", "_") if layout == "kohya" else "diffusion_model." + original
        state[f"{module}.lora_down.weight"] = down
        state[f"{module}.lora_up.weight"] = up
        state[f"{module}.alpha"] = torch.tensor(rank / 2)
    return _save(state, Path(models_dir) / "loras" / f"{name}.safetensors")


def _tiny_large():
    return tiny_pipeline("large")


def _tiny_medium():
    return tiny_pipeline("medium")


_COMMON = dict(
    encoders=(("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"), ("tokenizer_3", "text_encoder_3")),
    lora_prefixes=(),
    skipped_layers=1,  # clip skip 1 = the penultimate layer, no final LayerNorm (see the docstring)
    final_norm=False,
    pooled_step_input="pooled_prompt_embeds",
)
FAMILIES = (
    SD35Family(facts=LARGE, tiny_pipeline=_tiny_large, **_COMMON),
    SD35Family(facts=MEDIUM, tiny_pipeline=_tiny_medium, **_COMMON),
)
