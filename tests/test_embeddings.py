"""Textual-inversion embeddings by name in the prompt or negative prompt: A1111's .pt and
.safetensors layouts, SDXL clip_l/clip_g, weights, TI hashes, and nothing left behind."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest

from farm.hashes import sha256_file
from model_tree import a1111_tree, render, tiny_task
from worker.context import TaskError, WorkerContext


@pytest.fixture(scope="session")
def tree(tmp_path_factory):
    return a1111_tree(tmp_path_factory)


@pytest.fixture(scope="module")
def ctx(tree):
    return WorkerContext(models_dir=tree, allow_pickle=True)


def test_embedding_in_prompt_with_weight_and_hash(ctx, tree, tmp_path):
    base, _ = render(ctx, tiny_task(), tmp_path)
    with_emb, params = render(ctx, tiny_task(prompt="a red robot, emb15"), tmp_path)
    weighted, _ = render(ctx, tiny_task(prompt="a red robot, (emb15:0.6)"), tmp_path)
    assert np.abs(with_emb - base).max() > 2 and np.abs(weighted - with_emb).max() > 0
    assert params["TI hashes"] == f"emb15: {sha256_file(tree / 'embeddings/emb15.safetensors')[:12]}"
    pipe = ctx.cache.get(tree / "models/Stable-diffusion/tiny15.safetensors")
    assert len(pipe.tokenizer) == 49408  # the tokens are gone after the task


def test_pickled_embedding_in_negative_needs_pickles_allowed(ctx, tree, tmp_path):
    base, _ = render(ctx, tiny_task(), tmp_path)
    negative, params = render(ctx, tiny_task(negative_prompt="blurry, old15"), tmp_path)
    assert np.abs(negative - base).max() > 2 and params["TI hashes"].startswith("old15: ")
    strict = WorkerContext(models_dir=tree)
    with pytest.raises(TaskError, match=r"old15\.pt: a pickled embedding; only \.safetensors"):
        render(strict, tiny_task(negative_prompt="blurry, old15"), tmp_path / "strict")


def test_sdxl_embedding_and_wrong_family(ctx, tmp_path):
    base, _ = render(ctx, tiny_task("tinyxl"), tmp_path)
    with_emb, params = render(ctx, tiny_task("tinyxl", prompt="a red robot, embxl"), tmp_path)
    assert np.abs(with_emb - base).max() > 2 and "embxl" in params["TI hashes"]
    with pytest.raises(TaskError, match=r"embxl\.safetensors: an SDXL embedding cannot be used with an SD1.5"):
        render(ctx, tiny_task(prompt="a red robot, embxl"), tmp_path)
    with pytest.raises(TaskError, match=r"emb15\.safetensors: an SD1.5 embedding cannot be used with an SDXL"):
        render(ctx, tiny_task("tinyxl", prompt="a red robot, emb15"), tmp_path)


class _RunsCode:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pt_embedding_is_refused(tree, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tree / "models" / "Stable-diffusion", models / "Stable-diffusion")
    (models / "embeddings").mkdir()
    marker = tmp_path / "pwned"
    (models / "embeddings" / "evil.pt").write_bytes(pickle.dumps({"string_to_param": {"*": _RunsCode(f"touch {marker}")}}))
    ctx = WorkerContext(models_dir=models, allow_pickle=True)
    with pytest.raises(TaskError, match=r"evil\.pt: refused: the file wants to run code"):
        render(ctx, tiny_task(prompt="a red robot, evil"), tmp_path / "out")
    assert not marker.exists()
