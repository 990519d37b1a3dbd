"""LoRAs from prompt tags: kohya files for SD1.5 and SDXL, weights, several at once, removed after
the task, hashes in the infotext, the spec's lora and lora_weight axes."""

from __future__ import annotations

import numpy as np
import pytest

from farm.expand import expand
from farm.models import lora_hash
from farm.spec import parse_spec
from model_tree import a1111_tree, render, tiny_task
from worker.tasks import TaskError, WorkerContext


@pytest.fixture(scope="session")
def tree(tmp_path_factory):
    return a1111_tree(tmp_path_factory)


@pytest.fixture(scope="module")
def ctx(tree):
    return WorkerContext(models_dir=tree)


def test_lora_tags_change_the_image_and_are_removed_after(ctx, tree, tmp_path):
    base, params = render(ctx, tiny_task(), tmp_path)
    assert "Lora hashes" not in params
    styled, params = render(ctx, tiny_task(prompt="a red robot <lora:style15:0.8>"), tmp_path)
    assert np.abs(styled - base).max() > 2
    assert params["Lora hashes"] == f"style15: {lora_hash(tree / 'models/Lora/style15.safetensors')[:12]}"
    # The next task renders the bare checkpoint again (uint8 pixels: exactly).
    again, _ = render(ctx, tiny_task(seed=7, prompt="a red robot", cfg=7.0, steps=2, negative_prompt="blurry",
                                     filename="again-[task_id]"), tmp_path)
    assert np.array_equal(again, base)
    assert not any(ctx.cache.get(tree / "models/Stable-diffusion/tiny15.safetensors").get_list_adapters().values())


def test_te_and_unet_weights_and_several_loras(ctx, tmp_path):
    base, _ = render(ctx, tiny_task(), tmp_path)
    zero, _ = render(ctx, tiny_task(prompt="a red robot <lora:style15:0:0>"), tmp_path)
    assert np.abs(zero - base).max() <= 1  # weight 0 for both: the base model
    te_only, _ = render(ctx, tiny_task(prompt="a red robot <lora:style15:1:0>"), tmp_path)
    unet_only, _ = render(ctx, tiny_task(prompt="a red robot <lora:style15:0:1>"), tmp_path)
    both, _ = render(ctx, tiny_task(prompt="a red robot <lora:style15:1>"), tmp_path)
    assert len({te_only.tobytes(), unet_only.tobytes(), both.tobytes(), base.tobytes()}) == 4
    two, params = render(ctx, tiny_task(prompt="<lora:style15:1> a red robot <lora:detail15:0.7>"), tmp_path)
    assert np.abs(two - both).max() > 2
    assert [p.split(":")[0] for p in params["Lora hashes"].split(", ")] == ["style15", "detail15"]


def test_sdxl_lora(ctx, tmp_path):
    base, _ = render(ctx, tiny_task("tinyxl"), tmp_path)
    styled, params = render(ctx, tiny_task("tinyxl", prompt="a red robot <lora:stylexl:1>"), tmp_path)
    assert np.abs(styled - base).max() > 2 and "stylexl" in params["Lora hashes"]
    again, _ = render(ctx, tiny_task("tinyxl", filename="again-[task_id]"), tmp_path)
    assert np.array_equal(again, base)


def test_wrong_family_or_unknown_lora_fails_the_task_only(ctx, tmp_path):
    with pytest.raises(TaskError, match=r"stylexl\.safetensors: an SDXL LoRA cannot be used with an SD1.5 checkpoint"):
        render(ctx, tiny_task(prompt="a red robot <lora:stylexl:1>"), tmp_path)
    with pytest.raises(TaskError, match=r"unknown lora 'styel15' \(did you mean 'style15'\?\)"):
        render(ctx, tiny_task(prompt="<lora:styel15:1> a red robot"), tmp_path)
    with pytest.raises(TaskError, match="weights must be numbers"):
        render(ctx, tiny_task(prompt="<lora:style15:lots> a red robot"), tmp_path)
    base, _ = render(ctx, tiny_task(), tmp_path)  # and the model is clean for the next task
    clean, _ = render(ctx, tiny_task(filename="clean-[task_id]"), tmp_path)
    assert np.array_equal(base, clean)


def test_lora_and_lora_weight_axes(tree):
    spec = parse_spec(
        "prompt: a cat\ncheckpoint: tiny15\nseed: 1\nlora: [None, style15]\nlora_weight: [0.5, 1]\n",
        "job.yaml", tree,
    )
    prompts = [t.prompt for t in expand(spec)]
    assert prompts == ["a cat", "a cat", "a cat <lora:style15:0.5>", "a cat <lora:style15:1>"]
    with pytest.raises(Exception, match="unknown lora 'nope'"):
        parse_spec("prompt: a cat\ncheckpoint: tiny15\nseed: 1\nlora: nope\n", "job.yaml", tree)
    with pytest.raises(Exception, match="lora_weight: sweeps the weight of the 'lora' axis"):
        parse_spec("prompt: a cat\ncheckpoint: tiny15\nseed: 1\nlora_weight: [1, 2]\n", "job.yaml", tree)
