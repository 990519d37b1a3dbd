"""Z-Image Turbo (worker/families/zimage.py): the tiny model written in ComfyUI's layout
(denoiser in the original keys as safetensors, fp8 and GGUF Q8_0; qwen_3_4b; ae; an all-in-one
file), recognised and resolved by the farm, loaded through load_pipeline and rendered through
render_batch like diffusers' own ZImagePipeline call; conditioning, prompts of different lengths
in one call. What every family does alike (batches, CFG, other precisions, emphasis, LoRAs ...) is
in test_families_shared.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from farm.families import NOT_A_CHECKPOINT, header_family
from farm.model_files import read_tensor_shapes, weights_precision
from farm.models import Registry
from farm.parts import resolve_parts
from family_models import FAMILIES, load
from worker.families import of_pipeline, zimage
from worker.families.base import ModelFiles
from worker.pipelines import load_pipeline
from worker.render import Slot, render_batch
from worker.rng import image_noise

FAMILY = "Z-Image Turbo"


@pytest.fixture(scope="module")
def tiny(family_models):
    return family_models("zimage")


@pytest.fixture(scope="module")
def pipe(tiny):
    return load(FAMILIES["zimage"].files(tiny[1]))


@pytest.fixture(scope="module")
def reference():
    return zimage.tiny_pipeline()


_task = FAMILIES["zimage"].make_task  # the family's task defaults (tests/family_models.py)


def _render(pipe, *slots) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.float32) / 255 for image in render_batch(pipe, list(slots))])


def _noise(task, i=0) -> torch.Tensor:
    return image_noise((16, task.height // 8, task.width // 8), task.seed + i, task.rng, None, 0.0, (0, 0))


# ---- files --------------------------------------------------------------------------------------

def test_every_written_file_is_recognised_and_its_parts_resolve(tiny):
    models, paths = tiny
    for which in ("checkpoint", "fp8", "gguf", "all_in_one"):
        assert header_family(read_tensor_shapes(paths[which])) == FAMILY, which
    assert weights_precision(read_tensor_shapes(paths["fp8"])) == "fp8_e4m3fn"
    assert weights_precision(read_tensor_shapes(paths["gguf"])) == "Q8_0"
    for which in ("qwen3_4b", "vae", "kohya_lora", "diffusers_lora"):
        assert header_family(read_tensor_shapes(paths[which])) == NOT_A_CHECKPOINT, which
    registry = Registry(models)
    facts = of_pipeline(zimage.tiny_pipeline()).facts
    parts = resolve_parts(facts, paths["checkpoint"], registry)
    assert [(p.role, p.name, p.path) for p in parts] == [
        ("qwen3_4b", "qwen_3_4b", paths["qwen3_4b"]), ("vae", "ae", paths["vae"])]
    inside = resolve_parts(facts, paths["all_in_one"], registry)
    assert [(p.role, p.path) for p in inside] == [("qwen3_4b", None), ("vae", None)]


def test_header_family_needs_both_z_image_markers(tiny):
    tensors = read_tensor_shapes(tiny[1]["checkpoint"])
    assert header_family({k: v for k, v in tensors.items() if k != "cap_pad_token"}) != FAMILY
    assert header_family({k: v for k, v in tensors.items() if not k.startswith("layers.0.")}) != FAMILY


def test_a_broken_file_is_one_line_naming_it(tiny, tmp_path):
    from worker.safe_load import ModelLoadError

    paths = tiny[1]
    broken = tmp_path / "qwen_3_4b.safetensors"
    broken.write_bytes(paths["qwen3_4b"].read_bytes()[:100_000])
    with pytest.raises(ModelLoadError) as e:
        load_pipeline(ModelFiles(paths["checkpoint"], (("qwen3_4b", broken), ("vae", paths["vae"]))), "cpu",
                      torch.float32)
    assert "qwen_3_4b.safetensors" in str(e.value) and "\n" not in str(e.value)


# ---- conditioning -------------------------------------------------------------------------------

def test_encode_is_the_pipelines_own_qwen3_layer_minus_2_without_padding(pipe):
    cond = of_pipeline(pipe).encode(pipe, "a red robot", 1)
    assert cond.pooled is None and cond.embeds.shape[0] == 1
    text = pipe.tokenizer.apply_chat_template([{"role": "user", "content": "a red robot"}], tokenize=False,
                                              add_generation_prompt=True, enable_thinking=True)
    ids = pipe.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        own = pipe.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states[-2]
    np.testing.assert_allclose(cond.embeds.numpy(), own.numpy(), atol=1e-5)
    plain, _ = pipe.encode_prompt("a red robot", do_classifier_free_guidance=False)
    torch.testing.assert_close(cond.embeds[0], plain[0], rtol=0, atol=0)


def test_break_is_dropped_and_escapes_become_plain_text(pipe):
    """(Emphasis dropped: test_families_shared.py.)"""
    family = of_pipeline(pipe)
    plain = family.encode(pipe, "a red robot", 1).embeds
    # "a red  robot": the words stay, the keyword goes
    assert family.encode(pipe, "a red BREAK robot", 1).embeds.shape[1] == plain.shape[1]
    assert zimage.plain_text(r"a \(red\) robot") == "a (red) robot"


# ---- rendering ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_render_equals_the_pipelines_own_call(pipe, reference, cfg):
    task = _task(cfg=cfg)
    ours = _render(pipe, Slot(task))
    with torch.no_grad():
        own = reference(prompt="a red robot", negative_prompt="blurry", guidance_scale=cfg - 1.0,
                        num_inference_steps=2, height=64, width=64, latents=_noise(task)[None],
                        output_type="np").images
    np.testing.assert_allclose(ours, np.round(own * 255) / 255, atol=1.5 / 255)
    assert ours.std() > 0.02  # an image, not a flat field


def test_prompts_of_different_lengths_in_one_call(pipe):
    """pipeline_inputs gives the transformer one (L_i, D) tensor per image: prompts of different
    lengths share a call and each image equals its call alone."""
    family = of_pipeline(pipe)
    texts = ["a red robot", "a very long prompt about a small green house on a hill at dawn, detailed"]
    conds = [family.encode(pipe, t, 1) for t in texts]
    negative = [family.encode(pipe, "blurry", 1)] * 2
    assert conds[0].embeds.shape[1] != conds[1].embeds.shape[1]
    task = _task(cfg=2.5)
    noise = torch.stack([_noise(task, 0), _noise(task, 1)])

    def call(idx):
        kwargs = family.pipeline_inputs(pipe, task, [conds[i] for i in idx], [negative[i] for i in idx])
        with torch.no_grad():
            return pipe(**kwargs, num_inference_steps=2, height=64, width=64,
                        latents=family.pack_latents(pipe, noise[idx]), output_type="np").images

    together = call([0, 1])
    np.testing.assert_allclose(together[0], call([0])[0], atol=2e-4)
    np.testing.assert_allclose(together[1], call([1])[0], atol=2e-4)
