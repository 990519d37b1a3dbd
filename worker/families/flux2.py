"""Flux.2 [klein] 4B and 9B: a Flux2Transformer2DModel denoiser, one Qwen3 text encoder (Qwen3-4B
for 4B, Qwen3-8B for 9B) whose hidden states at three layers are stacked, the Flux.2 VAE
(AutoencoderKLFlux2: 32 latent channels, 2x2 patches normalised by a BatchNorm's running
statistics), a diffusers Flux2KleinPipeline built from those parts.

Files (ComfyUI's layout)
- Denoiser: diffusion_models/flux-2-klein-4b.safetensors (bf16, fp8 or GGUF) in BFL's key layout
  (`double_blocks.*`, `single_blocks.*`, `double_stream_modulation_img.lin`, `img_in` ...), or the
  same under `model.diffusion_model.` in an all-in-one file. Converted by diffusers' own
  convert_flux2_transformer_checkpoint_to_diffusers through `Flux2Transformer2DModel.from_single_file`
  (config = the config folder's transformer/). That loader does not complain about tensors a file
  lacks, so the file's names are compared first with the names the config's model has in BFL's
  layout (transformer_to_original, tested to be the exact inverse of diffusers' converter): a
  missing or unexpected tensor is a ModelLoadError naming the file and the tensor.
  * bf16/fp16/fp32: loaded in the compute dtype.
  * fp8 (e4m3fn or e5m2, as farm.model_files.weights_precision reads the header): loaded in the
    compute dtype, then `enable_layerwise_casting(storage_dtype=<the file's fp8 type>, compute_dtype=dtype)`:
    the Linear weights are stored in fp8 again in memory (the file's own values: fp8 -> dtype -> fp8
    is exact) and each layer is cast up to the compute dtype while it runs; diffusers' skip list
    (embedders, norms, proj_out) stays in the compute dtype.
  * GGUF (.gguf): GGUFQuantizationConfig(compute_dtype=dtype): quantized in memory, dequantized per layer.
- Text encoder: text_encoders/qwen_3_4b.safetensors (4B) or qwen_3_8b.safetensors (9B), HF
  transformers' Qwen3 keys, or the all-in-one file under `text_encoders.qwen3_4b.` / `.qwen3_8b.`;
  read by Z-Image's loader (worker/families/zimage.py load_text_encoder: Qwen3Model, `lm_head.*`
  ignored, fp8 upcast to the compute dtype at load). Config: `<stem>.config.json` beside the file,
  else config_dir/text_encoder/config.json. Tokenizer: configs/tokenizers/qwen3 (length-checked).
- VAE: vae/flux2-vae.safetensors in BFL's Flux.2 layout, or `vae.`/`first_stage_model.` inside an
  all-in-one file. diffusers 0.42 has no single-file converter for AutoencoderKLFlux2; this module
  converts: the encoder/decoder are the LDM layout (diffusers' convert_ldm_vae_checkpoint), and the
  parts outside it are named as diffusers' own scripts/convert_flux2_to_diffusers.py maps them
  (read there, not checked against a real file offline): `encoder.quant_conv.*` -> `quant_conv.*`,
  `decoder.post_quant_conv.*` -> `post_quant_conv.*`, `bn.running_mean` / `bn.running_var` as they
  are (`bn.num_batches_tracked` optional: it does not change the output). Config: `<stem>.config.json`
  beside the file, else config_dir/vae/config.json.

Which hidden layers: the pipeline stacks the encoder's hidden_states at `text_encoder_out_layers`
((9, 18, 27) for the real 36-layer encoders). They are read from the config folder's
model_index.json key `text_encoder_out_layers` when present (a tiny model's own `<stem>.config/`
has one, its encoder having fewer layers), else (9, 18, 27).

Conditioning: diffusers' own Flux2KleinPipeline.encode_prompt (Qwen3 chat template with
enable_thinking=False, padded to 512 tokens, the three layers concatenated per token: (1, 512, 3 x
width)). A1111's emphasis syntax is removed and its weights are IGNORED on this LLM encoder
(`(cat:1.5)` encodes as `cat`; BREAK is dropped). Clip skip does not apply.

Guidance: A1111's CFG scale is diffusers' guidance_scale (neg + cfg * (pos - neg)). The real klein
models are step-distilled (model_index `is_distilled: true`), and diffusers' pipeline then ignores
guidance_scale; here the pipeline is built with is_distilled=False so that the CFG a task asks for
is applied as A1111/ComfyUI would (the family default, 1, runs no negative pass: the distilled
model's way); the model's own flag is kept as `pipe.seedfarm_distilled`. No distilled-guidance
embedding (guidance_embeds is false for klein).

Latents: the starting noise is drawn per image as ComfyUI draws Flux.2's, in the patchified
latent shape (128, H/16, W/16) (32 VAE channels x 2x2 patches), which is what the pipeline's
`latents` argument takes (it packs them itself).

LoRAs: Flux2KleinPipeline.load_lora_weights (diffusers' Flux2 LoRA converters), so `lora_prefixes` is empty.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from farm.families import BY_NAME, DENOISER_PREFIX
from farm.model_files import ModelFileError, read_tensor_shapes, weights_precision
from worker.families.base import ModelFiles, PartsFamily
from worker.families.flux1 import _fill
from worker.families.zimage import FP8, _json_config, _part_prefixes, _read, load_scheduler, load_text_encoder
from worker.families.zimage import load_tokenizer, plain_text
from worker.safe_load import ModelLoadError

KLEIN_4B = BY_NAME["Flux.2 [klein] 4B"]
KLEIN_9B = BY_NAME["Flux.2 [klein] 9B"]
OUT_LAYERS = (9, 18, 27)  # Flux2KleinPipeline's default text_encoder_out_layers (36-layer Qwen3)
MAX_SEQUENCE_LENGTH = 512


# ---- the VAE: BFL's Flux.2 layout <-> AutoencoderKLFlux2 --------------------------------------------

_VAE_OUTSIDE = (("encoder.quant_conv.", "quant_conv."), ("decoder.post_quant_conv.", "post_quant_conv."))


def vae_to_diffusers(state: dict, config) -> dict:
    """A Flux.2 VAE state dict in BFL's layout -> AutoencoderKLFlux2's names."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    state = dict(state)
    bn = {k: state.pop(k) for k in list(state) if k.startswith("bn.")}
    for original, name in _VAE_OUTSIDE:
        for key in [k for k in state if k.startswith(original)]:
            state[name + key[len(original):]] = state.pop(key)
    out = convert_ldm_vae_checkpoint(state, dict(config))
    out.update(bn)
    return out


def vae_to_original(state: dict, config) -> dict:
    """AutoencoderKLFlux2's state dict -> BFL's Flux.2 layout (what flux2-vae.safetensors holds)."""
    from worker.ldm_layout import vae_to_ldm

    out = vae_to_ldm({k: v for k, v in state.items() if not k.startswith("bn.")}, config, prefix="")
    for original, name in _VAE_OUTSIDE:
        for key in [k for k in out if k.startswith(name)]:
            out[original + key[len(name):]] = out.pop(key)
    out["bn.running_mean"], out["bn.running_var"] = state["bn.running_mean"], state["bn.running_var"]
    return out


def load_vae(path: Path | None, checkpoint: Path, config_dir: Path, dtype):
    from diffusers import AutoencoderKLFlux2

    source = path if path is not None else checkpoint
    state = _read(source, () if path is not None else _part_prefixes("vae"))
    config = _json_config(path, config_dir, "vae")
    if not any(k.startswith("decoder.") for k in state) or "bn.running_var" not in state:
        raise ModelLoadError(f"{source.name}: not a Flux.2 VAE (no decoder.* and bn.* weights)")
    try:
        state = vae_to_diffusers(state, config)
    except Exception as e:
        raise ModelLoadError(f"{source.name}: not a VAE in the Flux.2 layout ({type(e).__name__}: {e})") from None
    state.setdefault("bn.num_batches_tracked", torch.tensor(0))
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return _fill(AutoencoderKLFlux2.from_config, config, state, "Flux.2 VAE", source, dtype)


# ---- the denoiser: BFL's layout <-> Flux2Transformer2DModel ----------------------------------------

_TOP = (("x_embedder.", "img_in."), ("context_embedder.", "txt_in."),
        ("time_guidance_embed.timestep_embedder.linear_1.", "time_in.in_layer."),
        ("time_guidance_embed.timestep_embedder.linear_2.", "time_in.out_layer."),
        ("time_guidance_embed.guidance_embedder.linear_1.", "guidance_in.in_layer."),
        ("time_guidance_embed.guidance_embedder.linear_2.", "guidance_in.out_layer."),
        ("double_stream_modulation_img.linear.", "double_stream_modulation_img.lin."),
        ("double_stream_modulation_txt.linear.", "double_stream_modulation_txt.lin."),
        ("single_stream_modulation.linear.", "single_stream_modulation.lin."),
        ("proj_out.", "final_layer.linear."))
_DOUBLE = {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
           "attn.to_out.0": "img_attn.proj", "ff.linear_in": "img_mlp.0", "ff.linear_out": "img_mlp.2",
           "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm",
           "attn.to_add_out": "txt_attn.proj", "ff_context.linear_in": "txt_mlp.0",
           "ff_context.linear_out": "txt_mlp.2"}
_QKV = {"attn.to_q": ("img_attn.qkv", 0), "attn.to_k": ("img_attn.qkv", 1), "attn.to_v": ("img_attn.qkv", 2),
        "attn.add_q_proj": ("txt_attn.qkv", 0), "attn.add_k_proj": ("txt_attn.qkv", 1),
        "attn.add_v_proj": ("txt_attn.qkv", 2)}
_SINGLE = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2", "attn.norm_q": "norm.query_norm",
           "attn.norm_k": "norm.key_norm"}


def transformer_to_original(state: dict) -> dict:
    """Flux2Transformer2DModel's state dict -> BFL's layout: the inverse of diffusers'
    convert_flux2_transformer_checkpoint_to_diffusers (fused qkv, `.scale` norms, shift/scale order
    of the final modulation)."""
    out: dict = {}
    fused: dict[str, list] = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if key.startswith(("transformer_blocks.", "single_transformer_blocks.")):
            kind, index, inner = module.split(".", 2)
            block = f"{'double' if kind == 'transformer_blocks' else 'single'}_blocks.{index}"
            if inner.startswith("attn.norm"):
                param = "scale"
            if kind == "transformer_blocks" and inner in _QKV:
                name, part = _QKV[inner]
                fused.setdefault(f"{block}.{name}.{param}", [None] * 3)[part] = value
                continue
            out[f"{block}.{(_DOUBLE if kind == 'transformer_blocks' else _SINGLE)[inner]}.{param}"] = value
        elif module == "norm_out.linear":
            scale, shift = torch.chunk(value, 2, dim=0)
            out[f"final_layer.adaLN_modulation.1.{param}"] = torch.cat([shift, scale], dim=0)
        else:
            new = next((orig + key[len(d):] for d, orig in _TOP if key.startswith(d)), None)
            if new is None:
                raise KeyError(f"no original name for {key}")
            out[new] = value
    out.update({k: torch.cat(v, dim=0) for k, v in fused.items()})
    return out


def load_transformer(path: Path, config_dir: Path, dtype, all_in_one: bool):
    """The Flux2Transformer2DModel of a denoiser file (safetensors or GGUF) or all-in-one file."""
    from accelerate import init_empty_weights
    from diffusers import Flux2Transformer2DModel, GGUFQuantizationConfig

    try:
        shapes = read_tensor_shapes(path)
    except ModelFileError as e:
        raise ModelLoadError(str(e)) from None
    own = {k: v for k, v in shapes.items() if not all_in_one or k.startswith(DENOISER_PREFIX)}
    config = _json_config(None, config_dir, "transformer")
    with init_empty_weights():
        expected = transformer_to_original(Flux2Transformer2DModel.from_config(config).state_dict())
    found = {k.removeprefix(DENOISER_PREFIX) for k in own}
    missing, unexpected = sorted(expected.keys() - found), sorted(found - expected.keys())
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise ModelLoadError(f"{path.name}: not a Flux.2 denoiser of the shape {config_dir.name}/transformer "
                             f"describes ({what}; {len(missing)} missing, {len(unexpected)} unexpected tensors)")
    common = dict(config=str(config_dir), subfolder="transformer", torch_dtype=dtype, local_files_only=True)
    try:
        if path.suffix.lower() == ".gguf":
            return Flux2Transformer2DModel.from_single_file(
                str(path), quantization_config=GGUFQuantizationConfig(compute_dtype=dtype), **common)
        state = _read(path, (DENOISER_PREFIX,) if all_in_one else ())
        model = Flux2Transformer2DModel.from_single_file(state, **common)
    except (ValueError, RuntimeError) as e:
        reason = (str(e).strip().splitlines() or [""])[-1].strip()[:200]
        raise ModelLoadError(f"{path.name}: the Flux.2 denoiser does not fit {config_dir.name}/transformer ({reason})") \
            from None
    storage = FP8.get(weights_precision(own))
    if storage is not None:
        model.enable_layerwise_casting(storage_dtype=storage, compute_dtype=dtype)
    return model


def _is_all_in_one(path: Path) -> bool:
    return path.suffix.lower() != ".gguf" and any(k.startswith(DENOISER_PREFIX) for k in read_tensor_shapes(path))


def pipeline_settings(config_dir: Path) -> tuple[tuple[int, ...], bool]:
    """(text_encoder_out_layers, is_distilled) from the config folder's model_index.json."""
    try:
        index = json.loads((Path(config_dir) / "model_index.json").read_text())
    except (OSError, ValueError):
        index = {}
    return tuple(index.get("text_encoder_out_layers", OUT_LAYERS)), bool(index.get("is_distilled", True))


# ---- the family ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Flux2KleinFamily(PartsFamily):
    encoder_role: str = "qwen3_4b"

    def load(self, files: ModelFiles, config_dir: Path, dtype):
        from diffusers import Flux2KleinPipeline

        from worker.pipelines import _quiet

        _quiet()
        checkpoint = files.checkpoint
        transformer = load_transformer(checkpoint, config_dir, dtype, _is_all_in_one(checkpoint))
        text_encoder = load_text_encoder(files.part(self.encoder_role), checkpoint, config_dir, dtype,
                                         role=self.encoder_role)
        layers, distilled = pipeline_settings(config_dir)
        depth = text_encoder.config.num_hidden_layers
        if not layers or max(layers) > depth or min(layers) < 0:
            raise ModelLoadError(f"{files.part(self.encoder_role) or checkpoint}: text_encoder_out_layers {layers} "
                                 f"do not fit a text encoder of {depth} layers")
        width = transformer.config.joint_attention_dim
        if len(layers) * text_encoder.config.hidden_size != width:
            raise ModelLoadError(f"{(files.part(self.encoder_role) or checkpoint).name}: a text encoder "
                                 f"{text_encoder.config.hidden_size} wide does not fit this denoiser "
                                 f"({width} = {len(layers)} layers x its width)")
        vae = load_vae(files.part("vae"), checkpoint, config_dir, dtype)
        pipe = Flux2KleinPipeline(scheduler=load_scheduler(config_dir), vae=vae, text_encoder=text_encoder,
                                  tokenizer=load_tokenizer(), transformer=transformer, is_distilled=False)
        pipe.set_progress_bar_config(disable=True)
        pipe.seedfarm_text_layers, pipe.seedfarm_distilled = layers, distilled
        return pipe

    def encode(self, pipe, text: str, clip_skip: int):
        from worker.conditioning import Conditioning

        with torch.inference_mode():
            embeds, _ = pipe.encode_prompt(prompt=plain_text(text), max_sequence_length=MAX_SEQUENCE_LENGTH,
                                           text_encoder_out_layers=text_layers(pipe))
        return Conditioning(embeds)

    def pipeline_inputs(self, pipe, task, positive: list, negative: list) -> dict:
        # every prompt is padded to 512 tokens: the rows stack
        kwargs = {"prompt_embeds": torch.cat([c.embeds for c in positive]), "guidance_scale": float(task.cfg),
                  "max_sequence_length": MAX_SEQUENCE_LENGTH, "text_encoder_out_layers": text_layers(pipe)}
        if task.cfg > 1:
            kwargs["negative_prompt_embeds"] = torch.cat([c.embeds for c in negative])
        return kwargs

    def latent_shape(self, pipe, width: int, height: int) -> tuple[int, int, int]:
        if width % 16 or height % 16:  # 8x VAE, then 2x2 patches
            from worker.render import RenderError

            raise RenderError(f"{self.name} renders sizes in multiples of 16, got {width}x{height}")
        factor = pipe.vae_scale_factor * 2
        return (pipe.transformer.config.in_channels, height // factor, width // factor)

    def pack_latents(self, pipe, noise):
        return noise  # (B, 128, H/16, W/16): the pipeline packs them into tokens itself


def text_layers(pipe) -> tuple[int, ...]:
    return tuple(getattr(pipe, "seedfarm_text_layers", OUT_LAYERS))


def _tiny(variant: str):
    def build():
        from worker.tiny_flux2 import tiny_pipeline

        return tiny_pipeline(variant)
    return build


FLUX2_KLEIN_4B = Flux2KleinFamily(facts=KLEIN_4B, encoders=(), lora_prefixes=(), tiny_pipeline=_tiny("4b"),
                                  encoder_role="qwen3_4b")
FLUX2_KLEIN_9B = Flux2KleinFamily(facts=KLEIN_9B, encoders=(), lora_prefixes=(), tiny_pipeline=_tiny("9b"),
                                  encoder_role="qwen3_8b")
FAMILIES = (FLUX2_KLEIN_4B, FLUX2_KLEIN_9B)
