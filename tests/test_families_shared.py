"""What every family after SDXL must do alike, run over the table of tests/family_models.py
(Flux.1 [dev], Flux.2 [klein] 4B, Z-Image Turbo, SD3.5 Medium): an image of a batch equals it
rendered alone; CFG 1 ignores the negative prompt and more uses it; distilled CFG and emphasis
change the image or are ignored, as the family says; the other files of a model (all-in-one, bf16,
fp8, GGUF) render close to the full-precision one; LoRAs apply and come off exactly. What is a
family's own (its diffusers reference call, its encoders, its files' layout) is in test_family_*.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from family_models import FAMILIES, load, render
from worker.render import Slot

ALL = list(FAMILIES)


def _pipe(family_models, key, which=None):
    _, paths = family_models(key)
    return load(FAMILIES[key].files(paths, which))


_images: dict = {}


def _image(family_models, key, **overrides) -> np.ndarray:
    """The full-precision image of the family's task with these overrides, rendered once a session:
    renders are what these tests cost, and several tests compare against the same task's image."""
    task = FAMILIES[key].make_task(**overrides)
    if (key, task.id) not in _images:
        (_images[key, task.id],) = render(_pipe(family_models, key), Slot(task))
    return _images[key, task.id]


@pytest.mark.parametrize("key", ALL)
def test_an_image_in_a_batch_equals_it_rendered_alone(family_models, key):
    family, pipe = FAMILIES[key], _pipe(family_models, key)
    task = family.make_task(batch_size=2)
    both = render(pipe, Slot(task, 0), Slot(task, 1))
    np.testing.assert_allclose(both[0], _image(family_models, key), atol=1)
    # image 1 of a batch is seed + 1
    np.testing.assert_allclose(both[1], _image(family_models, key, seed=task.seed + 1), atol=1)
    assert np.abs(both[0] - both[1]).max() > 20  # two seeds, two images (measured: 198 to 255 of 255)


@pytest.mark.parametrize("key", ALL)
def test_cfg_1_ignores_the_negative_prompt_and_above_1_uses_it(family_models, key):
    plain = _image(family_models, key, cfg=1.0, negative_prompt="")
    np.testing.assert_array_equal(_image(family_models, key, cfg=1.0, negative_prompt="blurry"), plain)
    guided = _image(family_models, key, cfg=4.0, negative_prompt="blurry")
    empty = _image(family_models, key, cfg=4.0, negative_prompt="")
    # measured (of 255): guided - plain 14 (Flux.2) to 120 (Z-Image); guided - empty 6 to 74
    assert np.abs(guided - plain).max() > 13
    assert np.abs(guided - empty).max() > 3  # the negative prompt itself is used


@pytest.mark.parametrize("key", ALL)
def test_distilled_cfg_changes_the_image_or_is_ignored(family_models, key):
    usual, high = _image(family_models, key), _image(family_models, key, distilled_cfg=6.0)
    if FAMILIES[key].uses_distilled_cfg:  # from 3.5
        assert np.abs(high - usual).max() > 3  # measured: 10 of 255
    else:
        np.testing.assert_array_equal(high, usual)


@pytest.mark.parametrize("key", ALL)
def test_emphasis_weights_tokens_or_is_dropped(family_models, key):
    from worker.families import of_pipeline

    family, pipe = FAMILIES[key], _pipe(family_models, key)
    encoder = of_pipeline(pipe)
    assert encoder.name == family.name
    with torch.inference_mode():  # as the worker's Encoder runs
        plain = encoder.encode(pipe, "a red robot", 1).embeds
        for text in ("a (red:1.5) robot", "a ((red)) [robot]"):
            emphasised = encoder.encode(pipe, text, 1).embeds
            if family.weights_emphasis:
                assert emphasised.shape == plain.shape and not torch.allclose(emphasised, plain), text
            else:
                torch.testing.assert_close(emphasised, plain, rtol=0, atol=0)


@pytest.mark.parametrize("key", [key for key, family in FAMILIES.items() if family.multiple_of_16])
def test_sizes_not_multiple_of_16_are_refused(family_models, key):
    from worker.render import RenderError

    with pytest.raises(RenderError, match="multiples of 16"):
        render(_pipe(family_models, key), Slot(FAMILIES[key].make_task(width=72)))


@pytest.mark.parametrize("key, which", [(key, which) for key, family in FAMILIES.items() for which in family.close])
def test_other_files_render_close_to_full_precision(family_models, key, which):
    from diffusers.quantizers.gguf.utils import GGUFParameter

    family = FAMILIES[key]
    most, mean, kind = family.close[which]
    other = _pipe(family_models, key, which)
    if kind == "fp8":  # stored in fp8, computed in fp32
        assert family.probe(other).dtype == torch.float8_e4m3fn
    if kind == "gguf":
        assert isinstance(family.probe(other), GGUFParameter)
    (image,) = render(other, Slot(family.make_task()))
    diff = np.abs(image - _image(family_models, key))
    assert diff.max() <= most and diff.mean() < mean, (diff.max(), diff.mean())
    if kind:
        assert diff.max() > 0  # it did compute from the quantized weights


@pytest.mark.parametrize("key, lora", [(key, lora) for key, family in FAMILIES.items() for lora in family.loras])
def test_lora_changes_the_image_and_comes_off_exactly(family_models, key, lora):
    from farm.models import Registry
    from farm.prompts import LoraRef
    from worker.lora import apply_loras, remove_loras

    family, pipe = FAMILIES[key], _pipe(family_models, key)
    root, _ = family_models(key)
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    task = family.make_task()
    bare = _image(family_models, key)
    try:
        hashes = apply_loras(pipe, [LoraRef(lora, 1.0, 1.0)], Registry(root))
        assert list(hashes) == [lora]
        (styled,) = render(pipe, Slot(task))
    finally:
        remove_loras(pipe)
    assert np.abs(styled - bare).max() > 13
    after = pipe.transformer.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    np.testing.assert_array_equal(render(pipe, Slot(task))[0], bare)
