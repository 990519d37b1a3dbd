"""The tiny models of the families after SDXL, one table row a family: how to write its tiny
files, its task defaults, what it ignores. tests/test_families_shared.py runs the tests every
family shares over this table; each tests/test_family_*.py keeps what is the family's own and
takes its models from here too, so that a test session writes and loads each family once
(conftest.py's `family_models` fixture writes them; `load` keeps each loaded pipeline)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from factories import make_task


def _write_flux1(root: Path) -> dict:
    """[dev] with every file, plus [schnell] (its own dict under "schnell") and two LoRAs."""
    from worker.tiny_flux1 import write_tiny, write_tiny_lora

    dev = write_tiny(root, guidance=True)
    dev["schnell"] = write_tiny(root, guidance=False, precisions=("fp32",), all_in_one=False)
    write_tiny_lora(root, "flux-kohya", "kohya")
    write_tiny_lora(root, "flux-ait", "diffusers", seed=2)
    return dev


def _write_flux2(root: Path) -> dict:
    from worker import tiny_flux2

    paths = tiny_flux2.write_tiny(root, "4b", precisions=("fp32", "bf16", "fp8_e4m3fn", "Q8_0"))
    paths["kohya_lora"] = tiny_flux2.write_tiny_lora(root, "klein-kohya", "kohya")
    paths["diffusers_lora"] = tiny_flux2.write_tiny_lora(root, "klein-aitk", "diffusers", seed=2)
    return paths


def _write_zimage(root: Path) -> dict:
    from worker.families import zimage

    paths = zimage.write_tiny(root)
    paths["kohya_lora"] = zimage.write_tiny_lora(root, "zlora-kohya", "kohya")
    paths["diffusers_lora"] = zimage.write_tiny_lora(root, "zlora-aitk", "diffusers", seed=2)
    return paths


def _write_sd35(root: Path) -> dict:
    """Medium, plus Large (its own dict under "large"; they share encoders and VAE) and three LoRAs."""
    from worker.families.sd35 import write_tiny, write_tiny_lora

    medium = write_tiny(root, "medium")
    medium["large"] = write_tiny(root, "large")
    for layout in ("kohya", "comfyui", "diffusers"):
        write_tiny_lora(root, f"sd35_{layout}", "medium", layout)
    return medium


@dataclass(frozen=True)
class Family:
    name: str                      # the family the rendered pipeline reports
    write: Callable[[Path], dict]  # writes the tiny files under a models folder, returns key -> path
    denoiser: str                  # key of the full-precision denoiser-only file
    all_in_one: str                # key of the file holding every part
    parts: tuple[str, ...]         # the part roles (and keys of their files), in ModelFiles order
    task: dict                     # make_task defaults: a valid 64x64, 2-step task of the family
    # other files of the same model -> (max, mean) difference allowed to the full-precision image
    # (0..255), and what its probed weight is: "fp8", "gguf" (quantized: some difference) or None
    close: dict
    probe: Callable                # pipe -> a denoiser weight, to see that the file's precision was loaded
    loras: tuple[str, ...]         # one LoRA a layout, under loras/
    uses_distilled_cfg: bool       # a guidance embedding: task.distilled_cfg changes the image
    weights_emphasis: bool         # "(red:1.5)" weights tokens; else the syntax is dropped, unweighted
    multiple_of_16: bool           # other sizes are refused (the latents are packed 2x2)

    def files(self, paths: dict, key: str | None = None):
        from worker.families.base import ModelFiles

        if key == self.all_in_one:
            return ModelFiles(paths[key], tuple((role, None) for role in self.parts))
        return ModelFiles(paths[key or self.denoiser], tuple((role, paths[role]) for role in self.parts))

    def make_task(self, **overrides):
        return make_task(**{**self.task, **overrides})


FAMILIES = {
    "flux1": Family(
        "Flux.1 [dev]", _write_flux1, "denoiser", "all_in_one", ("clip_l", "t5xxl", "vae"),
        dict(checkpoint="flux1-dev-tiny", prompt="a red robot in a field", negative_prompt="", sampler="Euler",
             schedule="Simple", steps=2, cfg=1.0, distilled_cfg=3.5),
        # measured: fp8 max 6, mean 0.9; Q8_0 max 1, mean 0.14
        {"all_in_one": (1, 1, None), "fp8_e4m3fn": (12, 3, "fp8"), "Q8_0": (3, 0.75, "gguf")},
        lambda pipe: pipe.transformer.transformer_blocks[0].attn.to_q.weight,
        ("flux-kohya", "flux-ait"), uses_distilled_cfg=True, weights_emphasis=True, multiple_of_16=True),
    "flux2": Family(
        "Flux.2 [klein] 4B", _write_flux2, "denoiser", "all_in_one", ("qwen3_4b", "vae"),
        dict(checkpoint="flux2-klein-4b-tiny", prompt="a red robot", negative_prompt="blurry", sampler="Euler",
             schedule="Simple", steps=2, cfg=1.0),
        # measured: bf16 max 2, mean 0.1; Q8_0 max 2, mean 0.2; fp8 e4m3fn max 14, mean 1.3
        {"all_in_one": (1.5, 0.255, None), "bf16": (7.65, 0.765, None), "Q8_0": (7.65, 1.275, "gguf"),
         "fp8_e4m3fn": (38.25, 5.1, "fp8")},
        lambda pipe: pipe.transformer.transformer_blocks[0].attn.to_q.weight,
        ("klein-kohya", "klein-aitk"), uses_distilled_cfg=False, weights_emphasis=False, multiple_of_16=True),
    "zimage": Family(
        "Z-Image Turbo", _write_zimage, "checkpoint", "all_in_one", ("qwen3_4b", "vae"),
        dict(checkpoint="zimage-tiny", prompt="a red robot", negative_prompt="blurry", sampler="Euler",
             schedule="Simple", steps=2, cfg=1.0),
        # random weights, so quantization errors are large: Q8_0 max 9, mean 1.3; fp8 max 41, mean 6.4
        {"all_in_one": (1.5, 0.255, None), "gguf": (15.3, 2.55, "gguf"), "fp8": (63.75, 10.2, "fp8")},
        lambda pipe: pipe.transformer.layers[0].attention.to_q.weight,
        ("zlora-kohya", "zlora-aitk"), uses_distilled_cfg=False, weights_emphasis=False, multiple_of_16=False),
    "sd35": Family(
        "SD3.5 Medium", _write_sd35, "diffusion_model", "checkpoint", ("clip_l", "clip_g", "t5xxl", "vae"),
        dict(checkpoint="tiny-sd35", sampler="Euler", schedule="Simple", cfg=4.5),
        # measured: Q8_0 max 2-3, mean ~0.2; fp8 e4m3fn max 13-17, mean ~1.5-2
        {"checkpoint": (1, 1, None), "gguf": (6, 0.6, "gguf"), "fp8": (40, 4, "fp8")},
        lambda pipe: pipe.transformer.transformer_blocks[0].attn.to_q.weight,
        ("sd35_kohya", "sd35_comfyui", "sd35_diffusers"), uses_distilled_cfg=False, weights_emphasis=True,
        multiple_of_16=False),
}


class FamilyModels:
    """conftest.py's session fixture: each family's tiny models, written on first use."""

    def __init__(self, tmp_path_factory):
        self._factory = tmp_path_factory
        self._written: dict[str, tuple[Path, dict]] = {}

    def __call__(self, key: str) -> tuple[Path, dict]:
        """(models folder, key -> path) of FAMILIES[key]."""
        if key not in self._written:
            root = self._factory.mktemp(f"{key}-models") / "models"
            self._written[key] = root, FAMILIES[key].write(root)
        return self._written[key]


_loaded: dict = {}


def load(files):
    """The pipeline of these files, loaded once a session (LoRA tests take theirs off again)."""
    from worker.pipelines import load_pipeline

    if files not in _loaded:
        _loaded[files] = load_pipeline(files, "cpu", torch.float32)
    return _loaded[files]


def render(pipe, *slots) -> list[np.ndarray]:
    """render_batch's images of these slots, as float arrays of 0..255."""
    from worker.render import render_batch

    return [np.asarray(image, dtype=np.float64) for image in render_batch(pipe, list(slots))]
