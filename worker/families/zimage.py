"""Z-Image Turbo: a ZImageTransformer2DModel denoiser, one Qwen3 text encoder (Qwen3-4B), the
Flux.1 VAE (16 latent channels), flow matching (shift 3, 8 steps, CFG off).

Files (ComfyUI's layout):
- the denoiser alone (diffusion_models/z_image_turbo_bf16.safetensors, fp8 or GGUF) in the original
  key layout (fused `attention.qkv`, `attention.out`, `x_embedder`, `final_layer` ...), which
  diffusers' single-file converter maps to its own; or an all-in-one file with the denoiser under
  `model.diffusion_model.`, the encoder under `text_encoders.qwen3_4b.` and the VAE under `vae.`;
- text_encoders/qwen_3_4b.safetensors: HF transformers' Qwen3 keys (`model.layers.N...`, a leading
  `model.` optional, `lm_head.*` ignored), loaded into transformers' Qwen3Model (what ZImagePipeline's
  model_index names; the pipeline reads hidden_states[-2], which Qwen3ForCausalLM gives the same);
- vae/ae.safetensors: the Flux.1 VAE in BFL/LDM keys (no quant_conv), converted with diffusers'
  convert_ldm_vae_checkpoint.
Configs: the text encoder's from `<stem>.config.json` beside its file, else
config_dir/text_encoder/config.json; the VAE's likewise (config_dir/vae/config.json); the tokenizer
is configs/tokenizers/qwen3 (checked to have Qwen3's 151,669 tokens).

Precision: a bf16/fp16/fp32 file loads in the compute dtype. An fp8 denoiser (e4m3fn or e5m2, as
farm.model_files.weights_precision reads it) is loaded in the compute dtype, then
`enable_layerwise_casting(storage_dtype=<the file's fp8 type>, compute_dtype=dtype)`: its weights are
stored in fp8 in memory (the file's own values: fp8 -> dtype -> fp8 is exact) and each layer is cast
to the compute dtype while it runs (diffusers keeps t_embedder/cap_embedder and norms in the compute
dtype). A GGUF denoiser stays quantized (GGUFQuantizationConfig, dequantized per layer at run time).
An fp8 text-encoder file is upcast to the compute dtype at load.

Conditioning: the prompt goes through diffusers' own ZImagePipeline.encode_prompt (the Qwen3 chat
template `<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n`, at most 512 tokens, hidden
layer -2, padding dropped): one (1, L, 2560) tensor per prompt, L varying with the prompt. A1111's
emphasis syntax is removed and its weights are IGNORED on this LLM encoder: `(cat:1.5)` encodes as
`cat`, escapes as their literal characters, BREAK is dropped. Clip skip does not apply.

Guidance: ZImagePipeline computes pos + g * (pos - neg) and runs the negative pass when g > 0;
A1111's CFG scale c (neg + c * (pos - neg)) is therefore g = c - 1. CFG 1 (the Turbo default): no
negative pass. A CFG below 1 also renders without the negative. No distilled guidance.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from farm.families import BY_NAME, DENOISER_PREFIX
from farm.model_files import ModelFileError, read_tensor_shapes, weights_precision
from worker import tiny_parts
from worker.families.base import TINY_SEED, ModelFiles, PartsFamily
from worker.safe_load import ModelLoadError
from worker.tiny_parts import save_safetensors as _save

FACTS = BY_NAME["Z-Image Turbo"]
QWEN3_TOKENS = 151669  # Qwen3's tokenizer: 151,643 byte-level BPE tokens + 26 added ones
MAX_SEQUENCE_LENGTH = 512  # ZImagePipeline's default max_sequence_length
ENCODER_ROLE = "qwen3_4b"
FP8 = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def _part_prefixes(role: str) -> tuple[str, ...]:
    """A part's prefixes in an all-in-one file (any family's part: Flux.2 [klein] 9B's qwen3_8b too)."""
    from farm.families import FAMILIES

    return next(p.in_checkpoint for f in FAMILIES for p in f.parts if p.role == role)


# ---- reading files ------------------------------------------------------------------------------

def _read(path: Path, prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (only those under the first of `prefixes` that it has,
    prefix removed, when given)."""
    from safetensors import safe_open

    try:
        names = list(read_tensor_shapes(path))
    except ModelFileError as e:
        raise ModelLoadError(str(e)) from None
    prefix = ""
    if prefixes:
        prefix = next((p for p in prefixes if any(n.startswith(p) for n in names)), None)
        if prefix is None:
            raise ModelLoadError(f"{path.name}: no tensors under {' or '.join(prefixes)} in the file")
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for name in names:
            if name.startswith(prefix):
                out[name[len(prefix):]] = f.get_tensor(name)
    return out


def _json_config(part_file: Path | None, config_dir: Path, subfolder: str) -> dict:
    own = part_file.with_name(part_file.stem + ".config.json") if part_file is not None else None
    path = own if own is not None and own.is_file() else Path(config_dir) / subfolder / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: cannot read the {subfolder} config ({e})") from None


def load_transformer(path: Path, config_dir: Path, dtype, all_in_one: bool):
    """The ZImageTransformer2DModel of a denoiser file (safetensors or GGUF) or all-in-one file."""
    from diffusers import GGUFQuantizationConfig, ZImageTransformer2DModel

    common = dict(config=str(config_dir), subfolder="transformer", torch_dtype=dtype, local_files_only=True)
    if path.suffix.lower() == ".gguf":
        return ZImageTransformer2DModel.from_single_file(
            str(path), quantization_config=GGUFQuantizationConfig(compute_dtype=dtype), **common)
    tensors = read_tensor_shapes(path)
    if all_in_one:
        state = {k: v for k, v in _read(path).items() if k.startswith(DENOISER_PREFIX)}
        model = ZImageTransformer2DModel.from_single_file(state, **common)
    else:
        model = ZImageTransformer2DModel.from_single_file(str(path), **common)
    storage = FP8.get(weights_precision({k: v for k, v in tensors.items()
                                         if not all_in_one or k.startswith(DENOISER_PREFIX)}))
    if storage is not None:
        model.enable_layerwise_casting(storage_dtype=storage, compute_dtype=dtype)
    return model


def load_text_encoder(path: Path | None, checkpoint: Path, config_dir: Path, dtype, role: str = ENCODER_ROLE,
                      model_class=None):
    """transformers' Qwen3Model from its own file (HF keys, `model.` prefix optional) or from the
    all-in-one checkpoint under the part's prefix; fp8 weights are upcast to `dtype`."""
    from accelerate import init_empty_weights
    from transformers import Qwen3Config, Qwen3Model

    model_class = model_class or Qwen3Model
    source = path if path is not None else checkpoint
    state = _read(source, () if path is not None else _part_prefixes(role))
    state = {k.removeprefix("model."): v.to(dtype) for k, v in state.items() if not k.startswith("lm_head.")}
    config = Qwen3Config(**{k: v for k, v in _json_config(path, config_dir, "text_encoder").items()
                            if k not in ("architectures", "torch_dtype", "dtype", "transformers_version")})
    with init_empty_weights(include_buffers=False):  # the rotary buffers are computed for real
        model = model_class(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise ModelLoadError(f"{source.name}: not a Qwen3 text encoder of this shape ({what}; "
                             f"{len(missing)} missing, {len(unexpected)} unexpected tensors)")
    return model.to(dtype).eval()


def load_tokenizer():
    from transformers import AutoTokenizer

    from worker.pipelines import configs_dir

    folder = configs_dir() / "tokenizers" / "qwen3"
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if len(tokenizer) != QWEN3_TOKENS:
        raise ModelLoadError(f"the Qwen3 tokenizer in {folder} has {len(tokenizer)} tokens, expected {QWEN3_TOKENS}; "
                             "its files are missing or broken")
    return tokenizer


def load_flux_vae(path: Path | None, checkpoint: Path, config_dir: Path, dtype):
    """The Flux.1 VAE (AutoencoderKL, 16 channels) from ae.safetensors (BFL/LDM keys) or from the
    all-in-one file under `vae.` / `first_stage_model.`."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    source = path if path is not None else checkpoint
    state = _read(source, () if path is not None else _part_prefixes("vae"))
    config = _json_config(path, config_dir, "vae")
    converted = convert_ldm_vae_checkpoint(state, config)
    vae = AutoencoderKL.from_config(config)
    missing, unexpected = vae.load_state_dict(converted, strict=False)
    if missing or not converted:
        raise ModelLoadError(f"{source.name}: not a VAE of this shape ({len(missing)} tensors missing, e.g. "
                             f"{(missing or ['all'])[0]})")
    return vae.to(dtype).eval()


def load_scheduler(config_dir: Path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_pretrained(str(config_dir), subfolder="scheduler", local_files_only=True)


def _is_all_in_one(path: Path) -> bool:
    return path.suffix.lower() != ".gguf" and any(k.startswith(DENOISER_PREFIX) for k in read_tensor_shapes(path))


# ---- the family ---------------------------------------------------------------------------------

class ZImageFamily(PartsFamily):
    def load(self, files: ModelFiles, config_dir: Path, dtype):
        from diffusers import ZImagePipeline

        checkpoint = files.checkpoint
        transformer = load_transformer(checkpoint, config_dir, dtype, _is_all_in_one(checkpoint))
        text_encoder = load_text_encoder(files.part(ENCODER_ROLE), checkpoint, config_dir, dtype)
        vae = load_flux_vae(files.part("vae"), checkpoint, config_dir, dtype)
        pipe = ZImagePipeline(scheduler=load_scheduler(config_dir), vae=vae, text_encoder=text_encoder,
                              tokenizer=load_tokenizer(), transformer=transformer)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def encode(self, pipe, text: str, clip_skip: int):
        from worker.conditioning import Conditioning

        with torch.inference_mode():
            embeds, _ = pipe.encode_prompt(prompt=plain_text(text), do_classifier_free_guidance=False,
                                           max_sequence_length=MAX_SEQUENCE_LENGTH)
        return Conditioning(embeds[0].unsqueeze(0))

    def pipeline_inputs(self, pipe, task, positive: list, negative: list) -> dict:
        # The transformer takes one (L_i, D) tensor per image: prompts of different lengths batch as
        # they are (it pads each caption itself, with attention masks).
        kwargs = {"prompt_embeds": [c.embeds[0] for c in positive], "guidance_scale": max(0.0, task.cfg - 1.0)}
        if task.cfg > 1:
            kwargs["negative_prompt_embeds"] = [c.embeds[0] for c in negative]
        return kwargs

    def pack_latents(self, pipe, noise):
        return noise.to(torch.float32)  # ZImagePipeline keeps its latents in fp32 (it draws its own so)


def plain_text(text: str) -> str:
    """A prompt without A1111's emphasis syntax: the pieces' text, weights and BREAK dropped."""
    from worker.prompt_syntax import parse_attention

    return "".join(piece for piece, weight in parse_attention(text) if not (piece == "BREAK" and weight == -1.0))


# ---- the tiny model -----------------------------------------------------------------------------

TINY_TRANSFORMER = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=96, n_layers=2,
                        n_refiner_layers=1, n_heads=3, n_kv_heads=3, norm_eps=1e-5, qk_norm=True, cap_feat_dim=32,
                        rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 12, 12], axes_lens=[1536, 512, 512])
def _randomize(model, generator, scale: float = 0.1) -> None:
    """Random-init transformers leave zeros (pad tokens, some modulations) and ones (norms):
    perturb every weight so that each of them matters in the tests."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def tiny_pipeline():
    """The tiny Z-Image pipeline (CPU, fp32) that write_tiny writes. Same seed -> same weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        transformer = ZImageTransformer2DModel(**TINY_TRANSFORMER)
    text_encoder, vae = tiny_parts.qwen3(), tiny_parts.vae("flux")  # the parts every tiny family shares
    generator = torch.Generator().manual_seed(TINY_SEED + 1)
    _randomize(transformer, generator)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=scheduler, vae=vae.eval(), text_encoder=text_encoder.eval(),
                          tokenizer=load_tokenizer(), transformer=transformer.eval())
    pipe.set_progress_bar_config(disable=True)
    pipe.seedfarm_family = FACTS.name
    return pipe


def transformer_to_original(state: dict) -> dict:
    """diffusers' ZImageTransformer2DModel state dict -> the original (Tongyi/ComfyUI) key layout:
    the inverse of diffusers' convert_z_image_transformer_checkpoint_to_diffusers."""
    renames = ((".attention.to_out.0.", ".attention.out."), (".attention.norm_k.", ".attention.k_norm."),
               (".attention.norm_q.", ".attention.q_norm."), ("all_final_layer.2-1.", "final_layer."),
               ("all_x_embedder.2-1.", "x_embedder."))
    out = {}
    for key, value in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q." in key:
            q, k, v = (state[key.replace(".to_q.", f".to_{x}.")] for x in "qkv")
            out[key.replace(".attention.to_q.", ".attention.qkv.")] = torch.cat([q, k, v])
            continue
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value
    return out


def write_config_dir(pipe, folder: Path) -> Path:
    """The `<stem>.config/` folder a tiny denoiser carries: model_index, transformer, scheduler, the
    text encoder's and VAE's configs."""
    import shutil

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    index = {"_class_name": "ZImagePipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "Qwen3Model"], "tokenizer": ["transformers", "Qwen2Tokenizer"],
             "transformer": ["diffusers", "ZImageTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    for name in ("transformer", "vae", "scheduler"):
        getattr(pipe, name).save_config(str(folder / name))
    (folder / "text_encoder").mkdir()
    (folder / "text_encoder" / "config.json").write_text(_encoder_config(pipe.text_encoder))
    return folder


def _encoder_config(encoder) -> str:
    config = encoder.config.to_dict()
    config["architectures"] = ["Qwen3ForCausalLM"]
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def write_tiny(models_dir: Path, name: str = "zimage-tiny", precision: str = "fp32", fp8: bool = True,
               gguf: bool = True, all_in_one: bool = True) -> dict:
    """Write the tiny Z-Image Turbo model in ComfyUI's layout under models_dir:
    diffusion_models/<name>.safetensors (precision fp32 or bf16; original keys) with <name>.config/,
    and when asked <name>-fp8.safetensors (e4m3fn), <name>-Q8_0.gguf, checkpoints/<name>-aio.safetensors
    (each with its config folder); text_encoders/qwen_3_4b.safetensors + .config.json;
    vae/ae.safetensors + .config.json. Returns role -> path."""
    models_dir = Path(models_dir)
    pipe = tiny_pipeline()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    denoiser = transformer_to_original(pipe.transformer.state_dict())
    encoder, vae = tiny_parts.part_tensors("qwen3_4b"), tiny_parts.part_tensors("flux")
    paths = {}
    diffusion = models_dir / "diffusion_models"

    def denoiser_file(path: Path, state: dict, dtype=None) -> Path:
        write_config_dir(pipe, path.with_name(path.stem + ".config"))
        if path.suffix == ".safetensors":
            return _save(state, path, dtype)
        return tiny_parts.write_gguf(state, path, "lumina2")

    paths["checkpoint"] = denoiser_file(diffusion / f"{name}.safetensors", denoiser, dtype)
    if fp8:
        paths["fp8"] = denoiser_file(diffusion / f"{name}-fp8.safetensors",
                                     {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 and k.endswith(".weight") else v
                                      for k, v in denoiser.items()})
    if gguf:
        paths["gguf"] = denoiser_file(diffusion / f"{name}-Q8_0.gguf", denoiser)
    paths[ENCODER_ROLE] = tiny_parts.write_part(models_dir, "qwen3_4b")
    paths["vae"] = tiny_parts.write_part(models_dir, "flux")
    if all_in_one:
        state = {DENOISER_PREFIX + k: v for k, v in denoiser.items()}
        state.update({_part_prefixes(ENCODER_ROLE)[0] + k: v for k, v in encoder.items()})
        state.update({_part_prefixes("vae")[0] + k: v for k, v in vae.items()})
        paths["all_in_one"] = denoiser_file(models_dir / "checkpoints" / f"{name}-aio.safetensors", state, dtype)
    return paths


LORA_TARGETS = (".attention.to_q", ".attention.to_k", ".attention.to_v", ".attention.to_out.0",
                ".feed_forward.w1", ".feed_forward.w2", ".feed_forward.w3")


def write_tiny_lora(models_dir: Path, name: str, layout: str = "kohya", seed: int = 1, rank: int = 4) -> Path:
    """A LoRA for the tiny Z-Image model under models_dir/loras/: every attention projection and
    feed-forward of its blocks, in kohya's layout (`lora_unet_layers_0_attention_to_q.lora_down.weight`,
    `.alpha`) or diffusers'/ai-toolkit's (`diffusion_model.layers.0.attention.to_q.lora_A.weight`)."""
    pipe = tiny_pipeline()
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for module, layer in pipe.transformer.named_modules():
        if not isinstance(layer, torch.nn.Linear) or not module.endswith(LORA_TARGETS):
            continue
        down = torch.randn(rank, layer.in_features, generator=generator) * 0.3
        up = torch.randn(layer.out_features, rank, generator=generator) * 0.3
        if layout == "kohya":
            key = "lora_unet_" + module.replace(".", "_")
            state.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                          f"{key}.alpha": torch.tensor(float(rank))})
        else:
            state.update({f"diffusion_model.{module}.lora_A.weight": down, f"diffusion_model.{module}.lora_B.weight": up})
    return _save(state, Path(models_dir) / "loras" / f"{name}.safetensors")


FAMILY = ZImageFamily(facts=FACTS, encoders=(), lora_prefixes=(), tiny_pipeline=tiny_pipeline)
FAMILIES = (FAMILY,)
