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
64), as from_single_file tells SDXL's encoders apart by width. The tiny pipelines themselves are
built by each family's module (worker/families/sd15.py, sdxl.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from worker.families import named, of_pipeline
from worker.ldm_layout import unet_to_ldm, vae_to_ldm
from worker.pipelines import configs_dir


def tiny_pipeline(family: str = "SD1.5"):
    """The in-memory tiny pipeline of a family (CPU, fp32). Same seed -> same weights every call."""
    return named(family).tiny_pipeline()


def _tiny(sdxl: bool):
    return tiny_pipeline("SDXL" if sdxl else "SD1.5")


def _kohya_text_encoders(pipe) -> list[tuple[str, object]]:
    """(kohya prefix, text encoder) of the pipeline's family: `lora_te_`, or `lora_te1_`/`lora_te2_`."""
    family = of_pipeline(pipe)
    return [(prefix, getattr(pipe, part)) for prefix, part in family.lora_prefixes if part != family.denoiser]


def write_checkpoint(pipe, path: Path) -> None:
    """Write a diffusers SD1.5 or SDXL pipeline as one A1111-layout .safetensors file."""
    from safetensors.torch import save_file

    state = {
        **unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config),
        **vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config),
    }
    state.update(of_pipeline(pipe).ldm_text_encoders(pipe))
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
    family = of_pipeline(pipe)
    base = configs_dir() / family.facts.config_folder
    if config_dir.exists():
        shutil.rmtree(config_dir)
    config_dir.mkdir(parents=True)
    shutil.copy2(base / "model_index.json", config_dir / "model_index.json")
    for name in ("scheduler", *(tokenizer for tokenizer, _ in family.encoders)):
        if (base / name).is_dir():  # the refiner has none: the worker passes SDXL's (worker/pipelines.py)
            shutil.copytree(base / name, config_dir / name)
    for name in ("unet", "vae"):
        (config_dir / name).mkdir()
        getattr(pipe, name).save_config(str(config_dir / name))
    for _, name in family.encoders:
        (config_dir / name).mkdir()
        encoder = getattr(pipe, name)
        te_config = encoder.config.to_dict()
        te_config["architectures"] = [type(encoder).__name__]  # CLIPTextModel, CLIPTextModelWithProjection
        (config_dir / name / "config.json").write_text(json.dumps(te_config, indent=2, sort_keys=True) + "\n")


def make_tiny(models_dir: Path, name: str = "seedfarm-tiny", sdxl: bool = False) -> Path:
    """Build the tiny model and write it under models_dir/Stable-diffusion/. Returns the checkpoint."""
    target_dir = Path(models_dir) / "Stable-diffusion"
    target_dir.mkdir(parents=True, exist_ok=True)
    pipe = _tiny(sdxl)
    checkpoint = target_dir / f"{name}.safetensors"
    write_config_dir(pipe, target_dir / f"{name}.config")
    write_checkpoint(pipe, checkpoint)
    return checkpoint


def tiny_inpaint_pipeline():
    """The tiny SD1.5 inpainting model: the tiny SD1.5 parts with a UNet of 9 input channels
    (latents, mask, masked image latents) from its own seed, in the family's pipeline."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from farm.families import INPAINT_CHANNELS
    from worker.families.base import TINY_SEED, TINY_UNET

    base = tiny_pipeline("SD1.5")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + INPAINT_CHANNELS)
        unet = UNet2DConditionModel(**{**TINY_UNET, "in_channels": INPAINT_CHANNELS}, cross_attention_dim=32).eval()
    parts = {k: v for k, v in base.components.items() if k != "unet"}
    pipe = StableDiffusionPipeline(**parts, unet=unet, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_tiny_inpaint(models_dir: Path, name: str = "seedfarm-tiny-inpaint") -> Path:
    """The tiny SD1.5 inpainting checkpoint under models_dir/Stable-diffusion/, as
    sd-v1-5-inpainting is laid out (conv_in of 9 channels). Returns the checkpoint."""
    target_dir = Path(models_dir) / "Stable-diffusion"
    target_dir.mkdir(parents=True, exist_ok=True)
    pipe = tiny_inpaint_pipeline()
    checkpoint = target_dir / f"{name}.safetensors"
    write_config_dir(pipe, target_dir / f"{name}.config")
    write_checkpoint(pipe, checkpoint)
    return checkpoint


def make_tiny_sdxl(models_dir: Path, name: str = "seedfarm-tiny-xl") -> Path:
    """The tiny SDXL model under models_dir/Stable-diffusion/. Returns the checkpoint."""
    return make_tiny(models_dir, name, sdxl=True)


def make_tiny_refiner(models_dir: Path, name: str = "seedfarm-tiny-xl-refiner") -> Path:
    """The tiny SDXL refiner (about 16 MB) under models_dir/Stable-diffusion/, in the layout of
    sd_xl_refiner_1.0.safetensors (bigG under conditioner.embedders.0.model.): it takes over the
    tiny SDXL model's renders (worker/refiner.py). Returns the checkpoint."""
    target_dir = Path(models_dir) / "Stable-diffusion"
    target_dir.mkdir(parents=True, exist_ok=True)
    pipe = tiny_pipeline("SDXL refiner")
    checkpoint = target_dir / f"{name}.safetensors"
    write_config_dir(pipe, target_dir / f"{name}.config")
    write_checkpoint(pipe, checkpoint)
    return checkpoint


def _flux1(guidance: bool):
    def write(models_dir: Path, name: str | None = None) -> Path:
        from worker.tiny_flux1 import write_tiny

        return write_tiny(models_dir, guidance, name)["denoiser"]
    return write


# `farm models make-tiny --family NAME`: family name (as farm/families.py spells it) -> a writer
# `(models_dir, name or None for the family's own default) -> the checkpoint (or denoiser) path`.
# A family module adds its one line here; the writer imports its module lazily.
TINY_WRITERS = {
    "SD1.5": lambda models_dir, name=None: make_tiny(models_dir, name or "seedfarm-tiny"),
    "SDXL": lambda models_dir, name=None: make_tiny_sdxl(models_dir, name or "seedfarm-tiny-xl"),
    "SDXL refiner": lambda models_dir, name=None: make_tiny_refiner(models_dir, name or "seedfarm-tiny-xl-refiner"),
    "Flux.1 [dev]": _flux1(True),
    "Flux.1 [schnell]": _flux1(False),
    "SD3.5 Medium": lambda models_dir, name=None: _sd35(models_dir, "medium", name),
    "SD3.5 Large": lambda models_dir, name=None: _sd35(models_dir, "large", name),
    "Z-Image Turbo": lambda models_dir, name=None: _zimage(models_dir, name),
    "Flux.2 [klein] 4B": lambda models_dir, name=None: _flux2(models_dir, "4b", name),
    "Flux.2 [klein] 9B": lambda models_dir, name=None: _flux2(models_dir, "9b", name),
}


def _sd35(models_dir: Path, variant: str, name: str | None) -> Path:
    from worker.families.sd35 import write_tiny

    return write_tiny(models_dir, variant, name or f"sd35-{variant}-tiny")["diffusion_model"]


def _zimage(models_dir: Path, name: str | None) -> Path:
    from worker.families.zimage import write_tiny

    return write_tiny(models_dir, name or "zimage-tiny")["checkpoint"]


def _flux2(models_dir: Path, variant: str, name: str | None) -> Path:
    from worker.tiny_flux2 import write_tiny

    return write_tiny(models_dir, variant, name)["denoiser"]


# What the example jobs (jobs/*.yaml) need besides the SD1.5 model: `farm models make-tiny DIR`
# (no --family) writes these too, under the names the jobs use. (family, name) each.
EXAMPLE_MODELS = (
    ("SDXL", "seedfarm-tiny-xl"),  # jobs/refiner.yaml
    ("SDXL refiner", "seedfarm-tiny-xl-refiner"),
)


def write_example_models(models_dir: Path) -> list[Path]:
    """The tiny models of EXAMPLE_MODELS, written into models_dir. Returns their files."""
    return [write_tiny_family(models_dir, family, name) for family, name in EXAMPLE_MODELS]


def write_tiny_family(models_dir: Path, family: str = "SD1.5", name: str | None = None) -> Path:
    """Write the tiny model of `family` (and, for a family built from parts, its parts) into
    models_dir in its users' layout. Returns the checkpoint (or denoiser) file. ValueError for a
    family without a tiny writer."""
    writer = TINY_WRITERS.get(family)
    if writer is None:
        raise ValueError(f"no tiny model for the family '{family}'; families: {', '.join(TINY_WRITERS)}")
    return writer(Path(models_dir), name)


def make_tiny_inputs(models_dir: Path) -> list[Path]:
    """Small input images for the example specs (img2img's init_images) under models_dir/inputs/:
    a 64x64 RGB gradient, a 96x64 one (for the resize modes) and a 64x64 RGBA one with transparent
    corners (flattened onto white, as A1111 does). Deterministic pixels, PNG."""
    import numpy as np
    from PIL import Image

    folder = Path(models_dir) / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:64, 0:96].astype(np.float32)
    wide = np.stack([x / 95 * 255, y / 63 * 255, 255 - (x + y) / 158 * 255], axis=-1).astype(np.uint8)
    square = wide[:, 16:80]
    alpha = np.where((np.abs(y[:, :64] - 31.5) + np.abs(x[:, :64] - 31.5)) < 40, 255, 0).astype(np.uint8)
    images = {"gradient.png": Image.fromarray(square), "wide.png": Image.fromarray(wide),
              "cutout.png": Image.fromarray(np.dstack([square[..., ::-1], alpha]), "RGBA")}
    paths = []
    for name, image in images.items():
        image.save(folder / name)
        paths.append(folder / name)
    return paths


def make_tiny_masks(models_dir: Path) -> list[Path]:
    """Inpaint masks for make_tiny_inputs' images (white = repaint), under models_dir/masks/
    with the same names, as a mask folder is matched: a square, an ellipse, and an RGBA mask whose
    opaque strokes are the mask (A1111's drawn masks). Deterministic pixels, PNG."""
    from PIL import Image, ImageDraw

    folder = Path(models_dir) / "masks"
    folder.mkdir(parents=True, exist_ok=True)
    square = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(square).rectangle((16, 16, 47, 47), fill=255)
    ellipse = Image.new("L", (96, 64), 0)
    ImageDraw.Draw(ellipse).ellipse((28, 12, 67, 51), fill=255)
    strokes = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(strokes).line((8, 56, 56, 8), fill=(255, 255, 255, 255), width=12)
    paths = []
    for name, image in {"gradient.png": square, "wide.png": ellipse, "cutout.png": strokes}.items():
        image.save(folder / name)
        paths.append(folder / name)
    return paths


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
    pipe = _tiny(sdxl)
    targets: dict[str, torch.Tensor] = {}  # kohya module name -> the base weight it adapts
    unet = {k: v for k, v in pipe.unet.state_dict().items()
            if ".transformer_blocks." in k and k.endswith((".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight"))}
    if sdxl:
        unet = {k.removeprefix("model.diffusion_model."): v for k, v in unet_to_ldm(unet, pipe.unet.config).items()}
    for key, weight in unet.items():
        targets["lora_unet_" + key.removesuffix(".weight").replace(".", "_")] = weight
    for prefix, encoder in _kohya_text_encoders(pipe):
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
    encoders = _kohya_text_encoders(pipe)
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
    pipe = _tiny(sdxl)
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
