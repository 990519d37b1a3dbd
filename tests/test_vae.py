"""A VAE chosen per task or swept as an axis, the float32 VAE, and the NaN (black image) retry."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from farm.hashes import sha256_file
from farm.expand import expand
from farm.spec import parse_spec
from model_tree import a1111_tree, render, tiny_task
from worker.context import TaskError, WorkerContext
from worker.vae import guard_decode


@pytest.fixture(scope="session")
def tree(tmp_path_factory):
    return a1111_tree(tmp_path_factory)


def test_task_vae_replaces_the_checkpoints_own_for_that_task(tree, tmp_path):
    ctx = WorkerContext(models_dir=tree)
    base, params = render(ctx, tiny_task(), tmp_path)
    assert "VAE" not in params
    other, params = render(ctx, tiny_task(vae="tinyvae"), tmp_path)
    assert np.abs(other - base).max() > 2
    assert params["VAE"] == "tinyvae"
    assert params["VAE hash"] == sha256_file(tree / "models/VAE/tinyvae.safetensors")[:10]
    again, _ = render(ctx, tiny_task(filename="again-[task_id]"), tmp_path)
    assert np.array_equal(again, base)
    with pytest.raises(TaskError, match="unknown vae 'tinyvea'"):
        render(ctx, tiny_task(vae="tinyvea"), tmp_path)
    with pytest.raises(TaskError, match="VAE 'tinyvae' at .* has hash"):
        render(ctx, tiny_task(vae="tinyvae", vae_hash="0" * 64), tmp_path)


def test_vae_axis_and_ids_of_tasks_without_one(tree):
    spec = parse_spec("prompt: a cat\ncheckpoint: tiny15\nseed: 1\nvae: [Automatic, tinyvae]\n", "job.yaml", tree)
    tasks = list(expand(spec))
    assert [t.vae for t in tasks] == ["", "tinyvae"]
    assert tasks[1].vae_hash == sha256_file(tree / "models/VAE/tinyvae.safetensors")
    assert "vae:tinyvae" in spec.checkpoint_hashes()
    plain = parse_spec("prompt: a cat\ncheckpoint: tiny15\nseed: 1\n", "job.yaml", tree)
    # A task without a VAE hashes as before the field existed.
    (task,) = expand(plain)
    assert task.id == tasks[0].id


def test_nan_from_a_half_precision_vae_is_decoded_again_in_float32(tree, caplog):
    from diffusers import AutoencoderKL

    from worker.pipelines import load_pipeline

    pipe = load_pipeline(tree / "models/Stable-diffusion/tiny15.safetensors")
    vae = AutoencoderKL.from_config(pipe.vae.config)
    vae.load_state_dict(pipe.vae.state_dict())
    with torch.no_grad():  # activations past fp16's 65504 (weights still fit), as some fine-tuned VAEs produce
        vae.post_quant_conv.weight.mul_(1e4)
    vae.to(torch.float16)
    latents = (torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 100).half()
    expected = copy.deepcopy(vae).to(torch.float32).decode(latents.float()).sample
    assert not torch.isfinite(vae.decode(latents).sample).all()  # the failure being guarded
    guard_decode(vae)
    with caplog.at_level(logging.WARNING, logger="seedfarm.worker"):
        decoded = vae.decode(latents).sample
    assert torch.isfinite(decoded).all() and torch.allclose(decoded, expected, atol=1e-4)
    assert vae.dtype == torch.float32 and "decoding again with the VAE in float32" in caplog.text
