"""Z-Image Turbo (worker/families/zimage.py): the tiny model written in ComfyUI's layout
(denoiser in the original keys as safetensors, fp8 and GGUF Q8_0; qwen_3_4b; ae; an all-in-one
file), recognised and resolved by the farm, loaded through load_pipeline and rendered through
render_batch like diffusers' own ZImagePipeline call; conditioning, guidance, batches, LoRAs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from farm.families import NOT_A_CHECKPOINT, header_family
from farm.model_files import read_tensor_shapes, weights_precision
from farm.models import Registry
from farm.parts import resolve_parts
from farm.prompts import LoraRef
from factories import make_task
from worker.families import of_pipeline, zimage
from worker.families.base import ModelFiles
from worker.pipelines import load_pipeline
from worker.render import Slot, render_batch
from worker.rng import image_noise

FAMILY = "Z-Image Turbo"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    models = tmp_path_factory.mktemp("zimage-models")
    paths = zimage.write_tiny(models)
    paths["kohya_lora"] = zimage.write_tiny_lora(models, "zlora-kohya", "kohya")
    paths["diffusers_lora"] = zimage.write_tiny_lora(models, "zlora-aitk", "diffusers", seed=2)
    return models, paths


def _files(paths, which="checkpoint"):
    if which == "all_in_one":
        return ModelFiles(paths[which], (("qwen3_4b", None), ("vae", None)))
    return ModelFiles(paths[which], (("qwen3_4b", paths["qwen3_4b"]), ("vae", paths["vae"])))


@pytest.fixture(scope="module")
def pipe(tiny):
    return load_pipeline(_files(tiny[1]), "cpu", torch.float32)


@pytest.fixture(scope="module")
def reference():
    return zimage.tiny_pipeline()


def _task(**overrides):
    base = dict(checkpoint="zimage-tiny", sampler="Euler", schedule="Simple", steps=2, cfg=1.0,
                prompt="a red robot", negative_prompt="blurry")
    return make_task(**{**base, **overrides})


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


def test_emphasis_syntax_is_dropped_and_its_weights_ignored(pipe):
    family = of_pipeline(pipe)
    plain = family.encode(pipe, "a red robot", 1).embeds
    for text in ("a (red:1.5) robot", "a ((red)) [robot]", "a red BREAK robot"):
        emphasised = family.encode(pipe, text, 1).embeds
        if "BREAK" in text:  # "a red  robot": the words stay, the keyword goes
            assert emphasised.shape[1] == plain.shape[1]
        else:
            torch.testing.assert_close(emphasised, plain, rtol=0, atol=0)
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


def test_cfg_uses_the_negative_prompt(pipe):
    plain = _render(pipe, Slot(_task(cfg=1.0, negative_prompt="")))
    assert np.array_equal(plain, _render(pipe, Slot(_task(cfg=1.0, negative_prompt="blurry"))))
    guided = _render(pipe, Slot(_task(cfg=4.0, negative_prompt="blurry")))
    assert np.abs(guided - plain).max() > 0.05


def test_batch_invariance(pipe):
    task = _task(batch_size=2, seed=11)
    both = _render(pipe, Slot(task, 0), Slot(task, 1))
    alone = _render(pipe, Slot(_task(seed=12)))
    np.testing.assert_allclose(both[1], alone[0], atol=1.5 / 255)
    assert np.abs(both[0] - both[1]).max() > 0.05


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


@pytest.mark.parametrize("which,atol,mean", [("all_in_one", 1.5 / 255, 1e-3), ("gguf", 0.06, 0.01),
                                              ("fp8", 0.25, 0.04)])
def test_other_files_render_close_to_full_precision(tiny, pipe, which, atol, mean):
    """Measured on the tiny model (random weights, so quantization errors are large): GGUF Q8_0
    max 0.035 / mean 0.005, fp8 e4m3fn max 0.16 / mean 0.025 (uint8 image / 255)."""
    other = load_pipeline(_files(tiny[1], which), "cpu", torch.float32)
    if which == "fp8":
        assert other.transformer.layers[0].attention.to_q.weight.dtype == torch.float8_e4m3fn
    if which == "gguf":
        assert type(other.transformer.layers[0].attention.to_q.weight).__name__ == "GGUFParameter"
    task = _task()
    full, theirs = _render(pipe, Slot(task)), _render(other, Slot(task))
    np.testing.assert_allclose(theirs, full, atol=atol)
    assert np.abs(theirs - full).mean() <= mean


# ---- LoRAs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("lora", ["zlora-kohya", "zlora-aitk"])
def test_lora_changes_the_image_and_is_removed_again(tiny, pipe, lora):
    from worker.lora import apply_loras, remove_loras

    models, _ = tiny
    bare_weights = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    task = _task()
    bare = _render(pipe, Slot(task))
    try:
        hashes = apply_loras(pipe, [LoraRef(lora, 1.0, 1.0)], Registry(models))
        assert set(hashes) == {lora}
        styled = _render(pipe, Slot(task))
    finally:
        remove_loras(pipe)
    assert np.abs(styled - bare).max() > 0.05
    after = pipe.transformer.state_dict()
    assert after.keys() == bare_weights.keys()
    assert all(torch.equal(after[k], v) for k, v in bare_weights.items())
    assert np.array_equal(_render(pipe, Slot(task)), bare)
