"""Flux.1 [dev] and [schnell]: a FluxTransformer2DModel denoiser, CLIP-L (pooled vector only) and
T5-XXL (per-token embeddings) text encoders, the Flux VAE (ae.safetensors, 16 latent channels), a
diffusers FluxPipeline built from those parts.

Files
- Denoiser: a denoiser-only file (ComfyUI's diffusion_models/, BFL key layout: `double_blocks.*`,
  `single_blocks.*`, `img_in` ...), or the same under `model.diffusion_model.` in an all-in-one
  file. It is converted to diffusers' names here (`to_diffusers`, which reads the width from the
  config: diffusers' own converter assumes the real width 3072) and handed to
  `FluxTransformer2DModel.from_single_file` as a state dict, with the local config folder.
  * bf16/fp16/fp32 safetensors: loaded in the compute dtype.
  * fp8 safetensors (e4m3fn or e5m2, as weights_precision reads the header): loaded in the compute
    dtype, then `enable_layerwise_casting(storage_dtype=<the file's fp8 type>, compute_dtype=dtype)`:
    every Linear/Conv weight of the transformer is stored in fp8 again (exactly the file's values:
    fp8 -> fp32/bf16 -> fp8 is lossless) and cast up to the compute dtype layer by layer while that
    layer runs; diffusers' skip list (embedders, norms, the output projection) stays in the compute
    dtype. The load briefly holds the whole denoiser in the compute dtype.
  * GGUF (.gguf, e.g. Q8_0, Q4_K): read by diffusers' GGUF reader and loaded with
    GGUFQuantizationConfig(compute_dtype=dtype): quantized in memory, dequantized per layer.
  [dev] vs [schnell]: dev has `guidance_in.*` (the guidance embedding); the config folder's
  transformer config (`guidance_embeds`) must agree, or the load fails naming the file.
- Text encoders: clip_l*.safetensors (`text_model.*`, HF transformers layout) and t5xxl*.safetensors
  (`encoder.*`, `shared.weight`), each from its own file or from the all-in-one file
  (`text_encoders.clip_l.transformer.*`, `text_encoders.t5xxl.transformer.*`). Config:
  `<file stem>.config.json` beside the file when there, else config_dir/text_encoder(_2)/config.json.
  fp8 files are cast up to the compute dtype as they load (they are not kept in fp8). Tokenizers:
  configs/sd15/tokenizer (CLIP-L) and configs/tokenizers/t5, length-checked.
- VAE: ae.safetensors (BFL/LDM layout `encoder.down.*`, no quant_conv), or `vae.`/`first_stage_model.`
  inside the all-in-one file; converted by diffusers' convert_ldm_vae_checkpoint. Config:
  `<stem>.config.json` beside it, else config_dir/vae/config.json.

Conditioning (what `encode` does with A1111 prompt syntax)
- T5 (the per-token embeddings the transformer attends to): the text is split by A1111's emphasis
  parser; each piece is tokenized on its own and the ids concatenated (a plain prompt gives exactly
  the tokenizer's ids), truncated to `max_sequence_length` - 1 tokens, then </s> and padding up to
  `max_sequence_length` (512 for [dev], 256 for [schnell]: the lengths BFL trained them with;
  diffusers' encode_prompt gives the same numbers with that max_sequence_length). The encoder's
  output is then weighted per token and its mean restored (A1111's "Original" emphasis, which
  Forge also applies to T5's output: multiply each token's vector by its weight, then scale the
  whole sequence so its mean is what it was). `BREAK` is dropped (T5 has no chunks).
- CLIP-L gives only its pooled vector (the </s> token after the final norm), from the text with the
  syntax removed, truncated at 77 tokens as diffusers does; weights do not change it (as in Forge,
  which takes the pooled vector before emphasis). Clip skip does not apply (the pooled vector is
  the last layer's), nor do textual-inversion embeddings.
- Guidance: A1111's CFG (`task.cfg`) is diffusers' `true_cfg_scale`: above 1 the negative prompt
  is run as a second pass (uncond + cfg * (cond - uncond)); at 1 (the default) there is no negative
  pass and the negative prompt is ignored. [dev]'s guidance embedding is `task.distilled_cfg`
  (Forge's "Distilled CFG Scale", default 3.5) passed as diffusers' `guidance_scale`; [schnell]
  has no guidance embedding.
- LoRAs: diffusers' FluxPipeline.load_lora_weights converts kohya/ComfyUI (`lora_unet_double_blocks_*`),
  BFL and ai-toolkit/diffusers (`transformer.*`) files; so `lora_prefixes` is empty.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from farm.families import BY_NAME, DENOISER_PREFIX
from farm.model_files import ModelFileError, read_tensor_shapes, weights_precision
from worker.families.base import ModelFiles, PartsFamily
from worker.safe_load import ModelLoadError

DEV = BY_NAME["Flux.1 [dev]"]
SCHNELL = BY_NAME["Flux.1 [schnell]"]
CLIP_LENGTH = 77
FP8 = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}

# ---- the BFL key layout <-> diffusers' FluxTransformer2DModel -------------------------------------
#
# One table serves both directions (loading users' files, writing the tiny test files). Each entry:
# (original tensor, diffusers tensors, how): None = the same tensor renamed; "qkv" = three equal
# parts along dim 0; "linear1" = q, k, v (inner width each) and the MLP's input (the rest);
# "swap" = the two halves exchanged (BFL's final modulation is shift, scale; diffusers' scale, shift).


def _table(config) -> list[tuple[str, tuple[str, ...], str | None]]:
    rows: list[tuple[str, tuple[str, ...], str | None]] = []

    def linear(orig: str, new: str | tuple[str, ...], how: str | None = None, bias: bool = True):
        new = (new,) if isinstance(new, str) else new
        rows.append((f"{orig}.weight", tuple(f"{n}.weight" for n in new), how))
        if bias:
            rows.append((f"{orig}.bias", tuple(f"{n}.bias" for n in new), how))

    def norm(orig: str, new: str):
        rows.append((f"{orig}.scale", (f"{new}.weight",), None))

    linear("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1")
    linear("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2")
    linear("vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    linear("vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
    if config["guidance_embeds"]:
        linear("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
        linear("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
    linear("txt_in", "context_embedder")
    linear("img_in", "x_embedder")
    for i in range(config["num_layers"]):
        o, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        linear(o + "img_mod.lin", d + "norm1.linear")
        linear(o + "txt_mod.lin", d + "norm1_context.linear")
        linear(o + "img_attn.qkv", tuple(d + f"attn.to_{x}" for x in "qkv"), "qkv")
        linear(o + "txt_attn.qkv", tuple(d + f"attn.add_{x}_proj" for x in "qkv"), "qkv")
        norm(o + "img_attn.norm.query_norm", d + "attn.norm_q")
        norm(o + "img_attn.norm.key_norm", d + "attn.norm_k")
        norm(o + "txt_attn.norm.query_norm", d + "attn.norm_added_q")
        norm(o + "txt_attn.norm.key_norm", d + "attn.norm_added_k")
        linear(o + "img_mlp.0", d + "ff.net.0.proj")
        linear(o + "img_mlp.2", d + "ff.net.2")
        linear(o + "txt_mlp.0", d + "ff_context.net.0.proj")
        linear(o + "txt_mlp.2", d + "ff_context.net.2")
        linear(o + "img_attn.proj", d + "attn.to_out.0")
        linear(o + "txt_attn.proj", d + "attn.to_add_out")
    for i in range(config["num_single_layers"]):
        o, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        linear(o + "modulation.lin", d + "norm.linear")
        linear(o + "linear1", (d + "attn.to_q", d + "attn.to_k", d + "attn.to_v", d + "proj_mlp"), "linear1")
        norm(o + "norm.query_norm", d + "attn.norm_q")
        norm(o + "norm.key_norm", d + "attn.norm_k")
        linear(o + "linear2", d + "proj_out")
    linear("final_layer.linear", "proj_out")
    linear("final_layer.adaLN_modulation.1", "norm_out.linear", "swap")
    return rows


def _inner(config) -> int:
    return config["num_attention_heads"] * config["attention_head_dim"]


def to_diffusers(state: dict, config) -> dict:
    """A Flux.1 denoiser state dict in BFL's layout (no prefix) -> FluxTransformer2DModel's names.
    Raises KeyError naming the first missing tensor. Works on GGUF-quantized tensors too (they are
    split along rows, which keeps the quantization blocks whole)."""
    inner = _inner(config)
    out = {}
    for orig, new, how in _table(config):
        t = state[orig]
        if how is None:
            parts = [t]
        elif how == "qkv":
            parts = list(torch.chunk(t, 3, dim=0))
        elif how == "linear1":
            parts = list(torch.split(t, [inner, inner, inner, t.shape[0] - 3 * inner], dim=0))
        else:  # swap
            shift, scale = torch.chunk(t, 2, dim=0)
            parts = [torch.cat([scale, shift], dim=0)]
        out.update(zip(new, parts))
    return out


def to_original(state: dict, config) -> dict:
    """FluxTransformer2DModel's state dict -> BFL's layout (what denoiser files hold)."""
    out = {}
    for orig, new, how in _table(config):
        parts = [state[n] for n in new]
        if how == "swap":
            scale, shift = torch.chunk(parts[0], 2, dim=0)
            out[orig] = torch.cat([shift, scale], dim=0)
        else:
            out[orig] = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
    return out


# ---- reading files ---------------------------------------------------------------------------------

def _tensors(path: Path, prefixes: tuple[str, ...] = ("",)) -> dict:
    """The tensors of a safetensors file whose names start with the first of `prefixes` that any
    name has, with that prefix removed (an all-in-one file holds several models)."""
    from safetensors import safe_open

    try:
        names = list(read_tensor_shapes(path))
    except ModelFileError as e:
        raise ModelLoadError(str(e)) from None
    prefix = next((p for p in prefixes if any(n.startswith(p) for n in names)), None)
    if prefix is None:
        return {}
    with safe_open(str(path), framework="pt") as f:
        return {n[len(prefix):]: f.get_tensor(n) for n in names if n.startswith(prefix)}


def _config_json(part_file: Path | None, config_dir: Path, subfolder: str) -> dict:
    """A part's config: `<stem>.config.json` beside its own file, else the config folder's."""
    if part_file is not None:
        own = part_file.with_name(part_file.stem + ".config.json")
        if own.is_file():
            return json.loads(own.read_text())
    return json.loads((config_dir / subfolder / "config.json").read_text())


def _cast(state: dict, dtype) -> dict:
    """Floating tensors in `dtype` (fp8 text encoders and VAEs are cast up here); ComfyUI's
    "scaled fp8" files keep a per-weight `.scale_weight`, applied as it is cast up."""
    out = {}
    for k, v in state.items():
        if k.endswith(".scale_weight") or k in ("scaled_fp8", "scale_input"):
            continue
        if v.is_floating_point():
            scale = state.get(k.removesuffix(".weight") + ".scale_weight") if k.endswith(".weight") else None
            v = v.to(torch.float32) * scale.to(torch.float32) if scale is not None else v
            v = v.to(dtype)
        out[k] = v
    return out


def _fill(model_class, config, state: dict, what: str, path: Path, dtype):
    """A transformers/diffusers model built without allocating weights, then given `state`."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = model_class(config)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    if missing:
        raise ModelLoadError(f"{path.name}: not a {what} this model can use ({len(missing)} weights missing, "
                             f"e.g. {missing[0]})")
    try:
        model.load_state_dict({k: state[k] for k in expected}, strict=True, assign=True)
    except RuntimeError as e:
        reason = (str(e).strip().splitlines() or [""])[-1].strip()[:200]
        raise ModelLoadError(f"{path.name}: {what} weights do not fit its config ({reason})") from None
    return model.to(dtype).eval()


def load_clip(path: Path | None, checkpoint: Path, config_dir: Path, dtype):
    from transformers import CLIPTextConfig, CLIPTextModel

    source = path or checkpoint
    state = _tensors(source, ("",) if path else ("text_encoders.clip_l.transformer.", "text_encoders.clip_l."))
    # ComfyUI's clip_l files use `text_model.*`; transformers >= 5.6 flattened CLIPTextModel
    state = {k.removeprefix("text_model."): v for k, v in _cast(state, dtype).items()}
    config = CLIPTextConfig.from_dict(_config_json(path, config_dir, "text_encoder"))
    return _fill(CLIPTextModel, config, state, "CLIP-L text encoder", source, dtype)


def load_t5(path: Path | None, checkpoint: Path, config_dir: Path, dtype):
    from transformers import T5Config, T5EncoderModel

    source = path or checkpoint
    state = _cast(_tensors(source, ("",) if path else ("text_encoders.t5xxl.transformer.", "text_encoders.t5xxl.")),
                  dtype)
    # the token embedding is stored once, as `shared` or as `encoder.embed_tokens` (they are tied)
    for a, b in (("shared.weight", "encoder.embed_tokens.weight"), ("encoder.embed_tokens.weight", "shared.weight")):
        if a not in state and b in state:
            state[a] = state[b]
    config = T5Config.from_dict(_config_json(path, config_dir, "text_encoder_2"))
    return _fill(T5EncoderModel, config, state, "T5-XXL text encoder", source, dtype)


def load_vae(path: Path | None, checkpoint: Path, config_dir: Path, dtype):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    source = path or checkpoint
    state = _cast(_tensors(source, ("",) if path else ("vae.", "first_stage_model.")), dtype)
    config = _config_json(path, config_dir, "vae")
    if not any(k.startswith("decoder.") for k in state):
        raise ModelLoadError(f"{source.name}: not a Flux VAE (no decoder.* weights)")
    try:
        state = convert_ldm_vae_checkpoint(state, config)
    except Exception as e:
        raise ModelLoadError(f"{source.name}: not a VAE in the Flux/LDM layout ({type(e).__name__}: {e})") from None
    return _fill(AutoencoderKL.from_config, config, state, "Flux VAE", source, dtype)


def load_transformer(path: Path, config_dir: Path, dtype):
    """The denoiser (see the module's docstring for GGUF and fp8)."""
    from diffusers import FluxTransformer2DModel

    config = json.loads((config_dir / "transformer" / "config.json").read_text())
    gguf = path.suffix.lower() == ".gguf"
    if gguf:
        from diffusers.models.model_loading_utils import load_gguf_checkpoint

        state = load_gguf_checkpoint(str(path), return_tensors=True)
        precision = None
    else:
        tensors = read_tensor_shapes(path)
        precision = weights_precision({k: v for k, v in tensors.items() if k.startswith(DENOISER_PREFIX)}
                                      or tensors)
        state = _tensors(path, (DENOISER_PREFIX, ""))
    state = {k.removeprefix(DENOISER_PREFIX): v for k, v in state.items()}
    if any(k.endswith(".scale_weight") for k in state):  # ComfyUI's "scaled fp8": per-weight scales
        raise ModelLoadError(f"{path.name}: a \"scaled fp8\" Flux.1 file (.scale_weight tensors) is not supported; "
                             "use a plain fp8, bf16 or GGUF file")
    has_guidance = "guidance_in.in_layer.weight" in state
    if has_guidance != bool(config["guidance_embeds"]):
        want = "Flux.1 [dev] (guidance_in.* weights)" if config["guidance_embeds"] else "Flux.1 [schnell] (no guidance_in.*)"
        raise ModelLoadError(f"{path.name}: its config folder {config_dir} describes {want}; the file is the other variant")
    try:
        state = to_diffusers(state, config)
    except KeyError as e:
        raise ModelLoadError(f"{path.name}: not a complete Flux.1 denoiser ({e.args[0]} missing)") from None
    kwargs = {}
    if gguf:
        from diffusers import GGUFQuantizationConfig

        kwargs["quantization_config"] = GGUFQuantizationConfig(compute_dtype=dtype)
    model = FluxTransformer2DModel.from_single_file(state, config=str(config_dir), subfolder="transformer",
                                                    torch_dtype=dtype, local_files_only=True, **kwargs)
    if precision in FP8:
        model.enable_layerwise_casting(storage_dtype=FP8[precision], compute_dtype=dtype)
    return model


def load_tokenizers():
    """(CLIP-L, T5) tokenizers from the shipped configs, checked for their real vocabularies."""
    from transformers import AutoTokenizer, CLIPTokenizer

    from worker.pipelines import CLIP_VOCAB_SIZE, configs_dir

    root = configs_dir()
    clip = CLIPTokenizer.from_pretrained(str(root / "sd15" / "tokenizer"), local_files_only=True)
    t5 = AutoTokenizer.from_pretrained(str(root / "tokenizers" / "t5"), local_files_only=True)
    for tokenizer, folder, size in ((clip, "sd15/tokenizer", CLIP_VOCAB_SIZE), (t5, "tokenizers/t5", T5_TOKENS)):
        if len(tokenizer) != size:
            raise ModelLoadError(f"tokenizer {root / folder} has {len(tokenizer)} tokens, expected {size}; "
                                 "the tokenizer files are missing or broken")
    return clip, t5


T5_TOKENS = 32100  # T5 v1.1's sentencepiece vocabulary with its 100 extra ids


# ---- the family ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Flux1Family(PartsFamily):
    max_sequence_length: int = 512  # T5 tokens (padded to): [dev] 512, [schnell] 256

    def load(self, files: ModelFiles, config_dir: Path, dtype):
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

        from worker.pipelines import _quiet

        _quiet()  # diffusers' notices (e.g. "modules that should be kept in float32: []") are noise
        checkpoint = files.checkpoint
        transformer = load_transformer(checkpoint, config_dir, dtype)
        text_encoder = load_clip(files.part("clip_l"), checkpoint, config_dir, dtype)
        text_encoder_2 = load_t5(files.part("t5xxl"), checkpoint, config_dir, dtype)
        vae = load_vae(files.part("vae"), checkpoint, config_dir, dtype)
        tokenizer, tokenizer_2 = load_tokenizers()
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(config_dir), subfolder="scheduler",
                                                                    local_files_only=True)
        return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)

    def t5_ids(self, tokenizer, text: str) -> tuple[list[int], list[float]]:
        """T5 ids (</s>, padding to max_sequence_length included) and each token's emphasis weight."""
        from worker.prompt_syntax import parse_attention

        ids: list[int] = []
        weights: list[float] = []
        for piece, weight in parse_attention(text):
            if piece == "BREAK" and weight == -1:
                continue
            piece_ids = tokenizer(piece, add_special_tokens=False).input_ids
            ids += piece_ids
            weights += [weight] * len(piece_ids)
        n = self.max_sequence_length - 1
        ids, weights = ids[:n] + [tokenizer.eos_token_id], weights[:n] + [1.0]
        pad = self.max_sequence_length - len(ids)
        return ids + [tokenizer.pad_token_id] * pad, weights + [1.0] * pad

    def encode(self, pipe, text: str, clip_skip: int):
        from diffusers.utils.torch_utils import get_module_execution_device

        from worker.conditioning import Conditioning, _emphasis
        from worker.prompt_syntax import parse_attention

        plain = "".join(p for p, w in parse_attention(text) if not (p == "BREAK" and w == -1))
        clip_ids = pipe.tokenizer(plain, padding="max_length", max_length=pipe.tokenizer_max_length,
                                  truncation=True, return_tensors="pt").input_ids
        pooled = pipe.text_encoder(clip_ids.to(get_module_execution_device(pipe.text_encoder))).pooler_output
        ids, weights = self.t5_ids(pipe.tokenizer_2, text)
        t5_ids = torch.tensor([ids], device=get_module_execution_device(pipe.text_encoder_2))
        embeds = _emphasis(pipe.text_encoder_2(t5_ids)[0], weights)
        return Conditioning(embeds.to(pipe.text_encoder_2.dtype), pooled.to(pipe.text_encoder.dtype))

    def pipeline_inputs(self, pipe, task, positive: list, negative: list) -> dict:
        distilled = task.distilled_cfg if task.distilled_cfg is not None else self.facts.default("distilled_cfg", 3.5)
        kwargs = {
            "prompt_embeds": torch.cat([c.embeds for c in positive]),
            "pooled_prompt_embeds": torch.cat([c.pooled for c in positive]),
            "guidance_scale": float(distilled),  # [dev]'s guidance embedding; [schnell] has none
            "true_cfg_scale": float(task.cfg),
        }
        if task.cfg > 1:  # A1111's CFG: a negative pass
            kwargs["negative_prompt_embeds"] = torch.cat([c.embeds for c in negative])
            kwargs["negative_pooled_prompt_embeds"] = torch.cat([c.pooled for c in negative])
        return kwargs

    def latent_shape(self, pipe, width: int, height: int) -> tuple[int, int, int]:
        if width % 16 or height % 16:  # 8x VAE, then 2x2 patches
            from worker.render import RenderError

            raise RenderError(f"{self.name} renders sizes in multiples of 16, got {width}x{height}")
        return super().latent_shape(pipe, width, height)

    def pack_latents(self, pipe, noise):
        b, c, h, w = noise.shape
        return pipe._pack_latents(noise, b, c, h, w)


def _tiny(guidance: bool):
    def build():
        from worker.tiny_flux1 import tiny_pipeline

        return tiny_pipeline(guidance)
    return build


FLUX1_DEV = Flux1Family(facts=DEV, encoders=(("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")),
                        lora_prefixes=(), tiny_pipeline=_tiny(True),
                        max_sequence_length=512)
FLUX1_SCHNELL = Flux1Family(facts=SCHNELL, encoders=FLUX1_DEV.encoders, lora_prefixes=(),
                            tiny_pipeline=_tiny(False),
                            max_sequence_length=256)
FAMILIES = (FLUX1_DEV, FLUX1_SCHNELL)
