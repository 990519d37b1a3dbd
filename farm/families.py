"""Model families (SD1.5, SDXL ...): the torch-free facts about each, in one table.

Each family says how its files are recognised (a checkpoint's tensor names, a diffusers folder's
pipeline class, its LoRAs' and embeddings' tensor names), its default render size, how much VRAM
its weights take (the pixel budget of routing and batching) and which shipped config folder
(configs/<folder>) loads its single-file checkpoints. `name` is what job records, `farm models
list`, the spec's `family:NAME` hashes and messages write; it is never spelled another way.
Infotext: no family writes anything of its own today (A1111 writes the same keys for both).

The worker's side of a family (pipeline classes, denoiser, text encoders, LoRA key mapping, the
tiny test model) is worker/families/<family>.py. Adding a family: a row here, a module there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from farm.model_files import read_model_index, read_safetensors_header, read_tensor_shapes
from farm.tunables import PIXELS_PER_FREE_GB

NOT_A_CHECKPOINT = "not a checkpoint"  # a file without denoiser weights (a LoRA, a VAE ...)
UNKNOWN = "?"  # the file does not say (a pickle, a VAE, no models folder at hand)
DENOISER_PREFIX = "model.diffusion_model."  # the denoiser's tensors in an all-in-one file


@dataclass(frozen=True)
class Part:
    """A file besides the denoiser that a family renders with: a text encoder or its VAE. A
    denoiser-only file (ComfyUI's diffusion_models/) finds each part in the models folder; an
    all-in-one file (checkpoints/, Forge's Stable-diffusion/) may hold it under `in_checkpoint`."""

    role: str  # "clip_l", "t5xxl", "qwen3_4b", "vae": what the infotext and errors call it
    kind: str  # the registry kind: "text_encoder" or "vae"
    arch: str  # what its header must show: "clip", "t5", "qwen3" (farm.model_files.encoder_arch), "vae"
    patterns: tuple[str, ...]  # default files, lower-case fnmatch patterns, the first match wins
    in_checkpoint: tuple[str, ...] = ()  # its tensor-name prefixes inside an all-in-one file


@dataclass(frozen=True)
class Family:
    name: str  # "SD1.5", "Flux.1 [dev]": as records, messages and the infotext's notes write it
    display: str  # for people
    checkpoint_keys: tuple[str, ...] = ()  # (SD) an A1111 checkpoint holding a tensor named so is this family
    # a diffusers folder's model_index.json `_class_name` (SD1.5/SDXL; folders of the families built
    # from parts are not rendered yet: their folders show the class name and are refused)
    pipeline_classes: tuple[str, ...] = ()
    lora_keys: tuple[str, ...] = ()  # kohya text-encoder prefixes only this family's LoRAs have
    embedding_parts: tuple[str, ...] = ("clip_l",)  # an embedding file's tensors, one per encoder
    default_size: str | None = None  # a job's size when not given (A1111's default); None: SD1.5's
    weights_gb: float = 2.5  # VRAM its fp16/bf16 denoiser takes (with some room), for the pixel budget
    config_folder: str | None = None  # configs/<folder> for its single files; None: not rendered
    # Families after SDXL are recognised from the denoiser's own tensor names (with or without
    # DENOISER_PREFIX): all of `denoiser_keys` present, none of `absent_keys`, and when given,
    # denoiser_width = (tensor, dim, size) (the variants of one architecture differ in width).
    denoiser_keys: tuple[str, ...] = ()
    absent_keys: tuple[str, ...] = ()
    denoiser_width: tuple[str, int, int] | None = None
    parts: tuple[Part, ...] = ()  # its text encoders, then its VAE, in the pipeline's order
    flow: bool = False  # a flow-matching model: Euler with FLOW_SCHEDULES, `shift`
    # Spec defaults that differ from A1111's SD ones (farm/params.py), used for every key a spec
    # leaves out: ("sampler", "Euler"), ("cfg", 1.0), ("steps", 4), ("distilled_cfg", 3.5) ...
    defaults: tuple[tuple[str, object], ...] = ()

    def default(self, key: str, fallback=None):
        return dict(self.defaults).get(key, fallback)


# The parts people keep in ComfyUI's text_encoders/ (or clip/) and vae/ folders, by the names the
# model makers and ComfyUI's example workflows give them.
CLIP_L = Part("clip_l", "text_encoder", "clip", ("clip_l*",), ("text_encoders.clip_l.",))
CLIP_G = Part("clip_g", "text_encoder", "clip", ("clip_g*",), ("text_encoders.clip_g.",))
T5XXL = Part("t5xxl", "text_encoder", "t5", ("t5xxl*", "t5*xxl*", "*t5*"), ("text_encoders.t5xxl.",))
QWEN3_4B = Part("qwen3_4b", "text_encoder", "qwen3", ("qwen_3_4b*", "qwen3_4b*", "qwen3-4b*", "*qwen*4b*"),
                ("text_encoders.qwen3_4b.",))
QWEN3_8B = Part("qwen3_8b", "text_encoder", "qwen3", ("qwen_3_8b*", "qwen3_8b*", "qwen3-8b*", "*qwen*8b*"),
                ("text_encoders.qwen3_8b.",))
FLUX_VAE = Part("vae", "vae", "vae", ("ae.*", "flux*ae*", "flux*vae*", "ae*"), ("vae.", "first_stage_model."))
FLUX2_VAE = Part("vae", "vae", "vae", ("flux2*vae*", "flux2*ae*", "flux-2*vae*"), ("vae.", "first_stage_model."))
SD3_VAE = Part("vae", "vae", "vae", ("sd3*vae*", "sd35*vae*", "sd3.5*vae*"), ("first_stage_model.", "vae."))

FLOW_DEFAULTS = (("sampler", "Euler"), ("schedule", "Simple"))
FLUX_KEY = "double_blocks.0.img_attn.norm.key_norm.scale"  # diffusers' marker of Flux.1-shaped models

# In recognition order: the first family whose keys match a file wins. The families after SDXL
# come first (their marker tensors are exact names); then SDXL's and SD2's prefixes; SD1.5, the
# last, matches any A1111 checkpoint. A family without config_folder is recognised so that its
# files are named in errors, not taken for SD1.5; it is not rendered yet.
FAMILIES = (
    Family("Chroma", "Chroma", denoiser_keys=("distilled_guidance_layer.in_proj.bias",),
           default_size="1024x1024", weights_gb=18.0),
    # Flux.2 before Flux.1: Flux.2 files have Flux.1's marker (FLUX_KEY) too, and [dev] its guidance_in.
    # klein 4B / 9B / Flux.2 [dev] by their block counts (configs/flux2-klein-*/transformer):
    # 4B 5 double + 20 single blocks, 9B 8 + 24, [dev] 8 + 48; tiny test models keep the counts
    Family("Flux.2 [klein] 4B", "FLUX.2 [klein] 4B",
           denoiser_keys=("single_stream_modulation.lin.weight", "single_blocks.19.linear1.weight"),
           absent_keys=("single_blocks.20.linear1.weight",),
           parts=(QWEN3_4B, FLUX2_VAE), flow=True, default_size="1024x1024", weights_gb=8.5,
           config_folder="flux2-klein-4b",
           defaults=FLOW_DEFAULTS + (("cfg", 1.0), ("steps", 4))),
    Family("Flux.2 [klein] 9B", "FLUX.2 [klein] 9B",
           denoiser_keys=("single_stream_modulation.lin.weight", "single_blocks.23.linear1.weight"),
           absent_keys=("single_blocks.24.linear1.weight",),
           parts=(QWEN3_8B, FLUX2_VAE), flow=True, default_size="1024x1024", weights_gb=18.5,
           config_folder="flux2-klein-9b",
           defaults=FLOW_DEFAULTS + (("cfg", 1.0), ("steps", 4))),
    Family("Flux.2", "FLUX.2 [dev]", denoiser_keys=("single_stream_modulation.lin.weight",),
           default_size="1024x1024", weights_gb=64.0),
    Family("Flux.1 [dev]", "FLUX.1 [dev]",
           denoiser_keys=(FLUX_KEY, "guidance_in.in_layer.weight"),
           parts=(CLIP_L, T5XXL, FLUX_VAE), flow=True, default_size="1024x1024", weights_gb=24.0,
           config_folder="flux1-dev",
           defaults=FLOW_DEFAULTS + (("cfg", 1.0), ("steps", 20), ("distilled_cfg", 3.5))),
    Family("Flux.1 [schnell]", "FLUX.1 [schnell]", denoiser_keys=(FLUX_KEY,), absent_keys=("guidance_in.in_layer.weight",),
           parts=(CLIP_L, T5XXL, FLUX_VAE), flow=True, default_size="1024x1024", weights_gb=24.0,
           config_folder="flux1-schnell",
           defaults=FLOW_DEFAULTS + (("cfg", 1.0), ("steps", 4))),
    Family("SD3.5 Large", "Stable Diffusion 3.5 Large",
           denoiser_keys=("joint_blocks.0.context_block.adaLN_modulation.1.bias", "joint_blocks.37.x_block.mlp.fc1.weight"),
           parts=(CLIP_L, CLIP_G, T5XXL, SD3_VAE), flow=True, default_size="1024x1024", weights_gb=17.0,
           config_folder="sd35-large",
           defaults=FLOW_DEFAULTS + (("cfg", 4.5), ("steps", 28))),
    Family("SD3.5 Medium", "Stable Diffusion 3.5 Medium",
           denoiser_keys=("joint_blocks.0.context_block.adaLN_modulation.1.bias", "joint_blocks.0.x_block.attn2.qkv.weight"),
           parts=(CLIP_L, CLIP_G, T5XXL, SD3_VAE), flow=True, default_size="1024x1024", weights_gb=5.5,
           config_folder="sd35-medium",
           defaults=FLOW_DEFAULTS + (("cfg", 4.5), ("steps", 40))),
    Family("SD3", "Stable Diffusion 3 Medium", denoiser_keys=("joint_blocks.0.context_block.adaLN_modulation.1.bias",),
           default_size="1024x1024", weights_gb=5.0),
    Family("HiDream", "HiDream-I1", denoiser_keys=("double_stream_blocks.0.block.adaLN_modulation.1.bias",),
           default_size="1024x1024", weights_gb=35.0),
    Family("Qwen-Image", "Qwen-Image", denoiser_keys=("txt_in.text_norm.weight",), absent_keys=(FLUX_KEY,),
           default_size="1328x1328", weights_gb=41.0),
    Family("Krea 2", "Krea 2", denoiser_keys=("txtfusion.projector.weight",), default_size="1024x1024", weights_gb=24.0),
    Family("Z-Image Turbo", "Z-Image Turbo",
           denoiser_keys=("layers.0.adaLN_modulation.0.weight", "cap_pad_token"),
           parts=(QWEN3_4B, FLUX_VAE), flow=True, default_size="1024x1024", weights_gb=12.5,
           config_folder="zimage-turbo",
           defaults=FLOW_DEFAULTS + (("cfg", 1.0), ("steps", 8))),
    Family("SDXL", "Stable Diffusion XL", ("conditioner.embedders.1.",), ("StableDiffusionXLPipeline",),
           lora_keys=("lora_te1_", "lora_te2_"), embedding_parts=("clip_l", "clip_g"),
           default_size="1024x1024", weights_gb=7.0, config_folder="sdxl"),
    # renders only as a task's `refiner` (worker/refiner.py), never as its checkpoint
    Family("SDXL refiner", "Stable Diffusion XL refiner", ("conditioner.embedders.0.model.",),
           ("StableDiffusionXLImg2ImgPipeline",), embedding_parts=("clip_g",), weights_gb=7.0,
           config_folder="sdxl-refiner"),
    Family("SD2", "Stable Diffusion 2", ("cond_stage_model.model.",)),
    Family("SD1.5", "Stable Diffusion 1.5", ("",), ("StableDiffusionPipeline",), lora_keys=("lora_te_",),
           default_size="512x512", config_folder="sd15"),
)
BY_NAME = {f.name: f for f in FAMILIES}
DEFAULT = BY_NAME["SD1.5"]  # what a file that does not say is taken for (sizes, budgets)


# Module names only the transformer families' LoRAs have (BFL's, Stability's MMDiT, diffusers').
# (SD UNets have `transformer_blocks` too, inside their attentions: no marker.)
TRANSFORMER_LORA_MARKERS = ("double_blocks", "single_blocks", "joint_blocks", "single_transformer_blocks",
                            "noise_refiner", "context_refiner")


def family(name: str) -> Family | None:
    """The family called `name` ("SD1.5", "Flux.1 [dev]" ...); None for another name (e.g. a
    diffusers folder's class, or "?")."""
    return BY_NAME.get(name)


def _denoiser_matches(f: Family, tensors: dict[str, tuple]) -> bool:
    if not f.denoiser_keys:
        return False
    def has(key: str) -> bool:
        return key in tensors or DENOISER_PREFIX + key in tensors
    if not all(has(k) for k in f.denoiser_keys) or any(has(k) for k in f.absent_keys):
        return False
    if f.denoiser_width:
        key, dim, size = f.denoiser_width
        shape = (tensors.get(key) or tensors.get(DENOISER_PREFIX + key) or (None, ()))[1]
        return len(shape) > dim and shape[dim] == size
    return True


def header_family(tensors: Iterable[str] | dict[str, tuple]) -> str:
    """A model file's family from its tensor names (and, when a dict name -> (dtype, shape) is
    given, their shapes), or NOT_A_CHECKPOINT. Tiny test models of a family match as the real
    ones do: recognition reads names, and the width checks read the table's real widths, so a
    tiny model of a family with width variants carries its real width in that one tensor."""
    if not isinstance(tensors, dict):
        tensors = {k: (None, ()) for k in tensors}
    for f in FAMILIES:
        if _denoiser_matches(f, tensors):
            return f.name
    if not any(k.startswith(DENOISER_PREFIX) for k in tensors):
        return NOT_A_CHECKPOINT
    for f in FAMILIES:
        if f.checkpoint_keys and any(k.startswith(f.checkpoint_keys) for k in tensors):
            return f.name
    return DEFAULT.name


# An SD UNet's first convolution: 4 input channels, or 9 in an inpainting checkpoint (the latents,
# the mask and the masked image's latents), as sd-v1-5-inpainting and SDXL's inpainting 0.1 have.
# Such a checkpoint is its family's (SD1.5, SDXL) and loads as it does, with a wider UNet
# (worker/pipelines.py); worker/inpainting.py gives the UNet its extra input.
CONV_IN = DENOISER_PREFIX + "input_blocks.0.0.weight"
INPAINT_CHANNELS = 9


def is_inpainting(tensors: dict[str, tuple]) -> bool:
    """Whether an SD checkpoint (name -> (dtype, shape)) is an inpainting model: its UNet takes
    9 input channels."""
    shape = (tensors.get(CONV_IN) or (None, ()))[1]
    return len(shape) > 1 and shape[1] == INPAINT_CHANNELS


def folder_family(folder: Path) -> str:
    """A diffusers folder's family from the pipeline class in model_index.json (SD2 shares SD1.5's
    class: its text encoder is 1024 wide); another pipeline shows its class name (e.g. Flux)."""
    class_name = read_model_index(folder)["_class_name"]
    name = next((f.name for f in FAMILIES if class_name in f.pipeline_classes), class_name.removesuffix("Pipeline"))
    if name == "SD1.5":
        try:
            width = json.loads((Path(folder) / "text_encoder" / "config.json").read_text()).get("hidden_size")
        except (OSError, ValueError, AttributeError):
            width = None
        if width == 1024:
            name = "SD2"
    return name


def file_family(path: Path, kind: str) -> str:
    """The family a model file belongs to, from its safetensors header only; UNKNOWN for pickles
    (their names cannot be read without unpickling) and when the file does not say. A diffusers
    folder's is read from its model_index.json (folder_family). kind: checkpoint, lora, embedding
    or vae (SD1.5 and SDXL VAEs have the same tensors: always UNKNOWN)."""
    path = Path(path)
    if kind == "checkpoint" and path.is_dir():
        return folder_family(path)
    suffix = path.suffix.lower()
    if kind == "checkpoint" and suffix == ".gguf":
        return header_family(read_tensor_shapes(path))
    if suffix != ".safetensors":
        return UNKNOWN
    header = read_safetensors_header(path)
    keys = [k for k in header if k != "__metadata__"]
    if kind == "checkpoint":
        return header_family({k: (v["dtype"], tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"})
    if kind == "lora":
        # a LoRA of a transformer family (Flux, SD3.5 ...) may carry SDXL-like lora_te1_ keys
        # (SD3's two CLIPs): diffusers checks it against the pipeline when it is applied
        if any(marker in k for k in keys for marker in TRANSFORMER_LORA_MARKERS) or any(
                k.startswith("transformer.") for k in keys):
            return UNKNOWN
        for f in FAMILIES:  # SDXL's lora_te1_/lora_te2_ before SD1.5's lora_te_
            if f.lora_keys and any(k.startswith(f.lora_keys) for k in keys):
                return f.name
        base = str((header.get("__metadata__") or {}).get("ss_base_model_version", ""))  # kohya's metadata
        return "SDXL" if "xl" in base.lower() else "SD1.5" if base.startswith("sd_v1") else UNKNOWN
    if kind == "embedding":
        for f in FAMILIES:  # a file with a second encoder's part (SDXL's clip_g) is that family's
            if len(f.embedding_parts) > 1 and f.embedding_parts[-1] in keys:
                return f.name
        return DEFAULT.name
    return UNKNOWN


def checkpoint_family(name: str, files: dict[str, Path], known: dict[str, str]) -> str:
    """The family of checkpoint `name`: from its file when the models folder is at hand (`files`:
    name -> path), else from a job record's 'family:NAME' entry in `known`; UNKNOWN when neither
    says (a broken file fails on the worker, with its own message)."""
    if name not in files:
        return known.get(f"family:{name}", UNKNOWN)
    try:
        return file_family(files[name], "checkpoint")
    except (ValueError, OSError):  # ModelFileError is a ValueError, and so is a bad model_index.json
        return UNKNOWN


def default_size(family_names: Iterable[str]) -> str:
    """The default `size` of a job on checkpoints of these families: their own when they all have
    the same one (SDXL and Flux: 1024x1024), else SD1.5's 512x512 (without a models folder or a
    job record the families are unknown: give `size` for SDXL jobs)."""
    sizes = {(family(name).default_size if family(name) else None) for name in family_names}
    only = sizes.pop() if len(sizes) == 1 else None
    return only or DEFAULT.default_size


def pixel_budget(vram_gb: float, family_name: str = DEFAULT.name) -> int:
    """A conservative guess of how many pixels per render fit a card in the default memory mode,
    used when a worker is not told `--max-pixels`: the family's weights take `weights_gb`; the rest
    holds PIXELS_PER_FREE_GB (about 0.5 megapixel per GB) for activations and the VAE decode. A
    family not in the table is budgeted as SD1.5."""
    weights = (family(family_name) or DEFAULT).weights_gb
    return max(0, int((vram_gb - weights) * PIXELS_PER_FREE_GB))
