"""A user's A1111 install in miniature, built once per test session: tiny SD1.5 and SDXL
checkpoints, kohya LoRAs for both, embeddings in every layout, a VAE. Test modules share it through
`a1111_tree(tmp_path_factory)`; `comfyui_tree` lays the same files out as ComfyUI does."""

from __future__ import annotations

import shutil
from pathlib import Path

_built: dict[str, Path] = {}


def a1111_tree(tmp_path_factory) -> Path:
    """root/models/{Stable-diffusion,Lora,VAE}/ and root/embeddings/ (A1111's own layout)."""
    if "a1111" not in _built:
        from worker.tiny import make_tiny, make_tiny_embedding, make_tiny_lora, make_tiny_sdxl, make_tiny_vae

        root = tmp_path_factory.mktemp("a1111")
        models = root / "models"
        make_tiny(models, "tiny15")
        make_tiny_sdxl(models, "tinyxl")
        make_tiny_lora(models, "style15", seed=1)
        make_tiny_lora(models, "detail15", seed=5)
        make_tiny_lora(models, "stylexl", sdxl=True, seed=1)
        make_tiny_vae(models, "tinyvae")
        make_tiny_embedding(root, "emb15", "safetensors")
        make_tiny_embedding(root, "old15", "pt", vectors=1, seed=4)
        make_tiny_embedding(root, "embxl", "sdxl")
        _built["a1111"] = root
    return _built["a1111"]


def comfyui_tree(a1111: Path, target: Path) -> Path:
    """The same files as ComfyUI keeps them: models/{checkpoints,loras,vae,embeddings}."""
    models = target / "models"
    src = a1111 / "models"
    shutil.copytree(src / "Stable-diffusion", models / "checkpoints")
    shutil.copytree(src / "Lora", models / "loras")
    shutil.copytree(src / "VAE", models / "vae")
    shutil.copytree(a1111 / "embeddings", models / "embeddings")
    return models


def tiny_task(checkpoint: str = "tiny15", **overrides):
    """A 64x64, 2-step task on a tiny checkpoint."""
    from factories import make_task

    return make_task(**{"job": "models", "checkpoint": checkpoint, **overrides})


def run_task(task, store, ctx) -> dict:
    """The worker's task body for one task, waiting for its images to be stored: its summary, or
    TaskError with the reason the worker reported."""
    from worker.context import TaskError
    from worker.render_loop import render_tasks

    results = []
    render_tasks([task], store, ctx, lambda t, summary, failure: results.append((summary, failure)))
    ctx.writer.flush()
    ((summary, failure),) = results
    if failure:
        raise TaskError(failure)
    return summary


def render(ctx, task, out: Path):
    """Run the task through the worker's task body into a folder store; (pixels, infotext params)."""
    import numpy as np
    from PIL import Image

    from farm.infotext import parse_infotext, read_parameters
    from farm.store import open_store

    run_task(task, open_store(str(out)), ctx)
    (path,) = (out / task.job / "images").glob(f"*{task.id}*.png")
    _, _, params = parse_infotext(read_parameters(path))
    return np.asarray(Image.open(path), dtype=np.int16), params
