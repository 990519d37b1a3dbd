"""worker/rng.py: A1111's RNG sources, variation seeds, seed resize and per-step noise (ENSD); eta and
ENSD on rendered pixels."""

import numpy as np
import pytest
import torch

from worker.rng import image_noise, randn, slerp
from factories import make_task


def test_nv_matches_the_reference_value():
    """NV (A1111's modules/rng_philox.py), seed 0, shape (3, 4): the first row of an NVIDIA GPU's torch.randn."""
    noise = randn(0, (3, 4), "nv")
    assert noise.dtype == torch.float32 and noise.shape == (3, 4)
    np.testing.assert_allclose(noise[0].numpy(), [-0.92466259, -0.42534415, -2.6438457, 0.14518388], atol=1e-5)


def test_nv_is_a_standard_normal_and_uses_the_whole_64_bit_seed():
    big = randn(0, (64, 64, 4), "nv")
    assert abs(float(big.mean())) < 0.05 and abs(float(big.std()) - 1) < 0.05
    assert not torch.equal(randn(1 << 32, (8,), "nv"), randn(0, (8,), "nv"))  # the high half is the key too
    assert torch.equal(randn(7, (4, 8, 8), "nv"), randn(7, (4, 8, 8), "nv"))


def test_cpu_source_is_torchs_cpu_generator():
    expected = torch.randn((4, 8, 8), generator=torch.Generator("cpu").manual_seed(42))
    assert torch.equal(randn(42, (4, 8, 8), "cpu"), expected)
    assert not torch.equal(randn(42, (4, 8, 8), "cpu"), randn(42, (4, 8, 8), "nv"))


def test_unknown_source_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown RNG source 'gpu'; valid: cpu, nv"):
        randn(0, (2,), "gpu")


def test_variation_strength_blends_from_seed_to_subseed():
    shape = (4, 8, 8)
    base, other = randn(10, shape), randn(20, shape)
    assert torch.equal(image_noise(shape, 10, "cpu", 20, 0.0), base)
    assert torch.allclose(image_noise(shape, 10, "cpu", 20, 1.0), other, atol=1e-5)
    half = image_noise(shape, 10, "cpu", 20, 0.5)
    assert not torch.allclose(half, base) and not torch.allclose(half, other)
    # spherical, not linear: the blend keeps the norm of unit-variance noise (a lerp shrinks it)
    assert float(half.std()) > 0.9 and float((0.5 * base + 0.5 * other).std()) < 0.8


def test_slerp_falls_back_to_lerp_for_nearly_parallel_noise():
    low = randn(1, (4, 8, 8))
    assert torch.allclose(slerp(0.3, low, low * 1.0001), low * 0.7 + low * 1.0001 * 0.3)


def test_seed_resize_pastes_the_old_size_noise_centred():
    # 64x64 pixels -> latent 8x8; made at 32x32 pixels (4x4 latent) and pasted in the middle
    noise = image_noise((4, 8, 8), 5, "cpu", resize_from=(32, 32))
    small = randn(5, (4, 4, 4))
    assert torch.equal(noise[:, 2:6, 2:6], small)
    assert torch.equal(noise[:, 0, :], randn(5, (4, 8, 8))[:, 0, :])
    # made larger than the image: its centre is cropped
    larger = image_noise((4, 8, 8), 5, "cpu", resize_from=(96, 80))  # latent 10 high, 12 wide
    assert torch.equal(larger, randn(5, (4, 10, 12))[:, 1:9, 2:10])
    assert torch.equal(image_noise((4, 8, 8), 5, "cpu", resize_from=(0, 0)), randn(5, (4, 8, 8)))


# ---- per-step noise: eta and ENSD --------------------------------------------------------------

def test_step_generator_without_ensd_skips_the_starting_noise_and_with_ensd_starts_at_seed_plus_ensd():
    from worker.rng import step_generator

    shape = (4, 8, 8)
    plain = torch.Generator("cpu").manual_seed(7)
    torch.randn((1, *shape), generator=plain)
    assert torch.equal(torch.randn(3, generator=step_generator(7, shape)), torch.randn(3, generator=plain))
    # A1111's modules/rng.py: after the starting noise, a fresh generator from seed + ENSD
    fresh = torch.Generator("cpu").manual_seed(7 + 31337)
    assert torch.equal(torch.randn(3, generator=step_generator(7, shape, 31337)), torch.randn(3, generator=fresh))


@pytest.fixture(scope="module")
def pipe():
    from worker.tiny import tiny_pipeline

    return tiny_pipeline()


def _render(pipe, **overrides) -> np.ndarray:
    """64x64, 3 steps: with 2 the tiny model's last step all but erases the one step's noise
    (pixels differ by at most 1), so neither eta nor ENSD would show."""
    from worker.render import render_images

    task = make_task(**{"prompt": "a lighthouse at dusk", "seed": 300, "checkpoint": "tiny", "sampler": "Euler a",
                        "steps": 3, **overrides})
    (image,) = render_images(pipe, task)
    return np.asarray(image).astype(np.int16)


def _differ(a: np.ndarray, b: np.ndarray) -> bool:
    return int(np.abs(a - b).max()) > 1


def test_eta_changes_an_ancestral_samplers_pixels_and_its_default_changes_nothing(pipe):
    default = _render(pipe)
    assert np.array_equal(_render(pipe, eta=1.0), default)  # Euler a's default eta: diffusers' own step
    assert _differ(_render(pipe, eta=0.5), default)
    assert _differ(_render(pipe, eta=0.0), _render(pipe, eta=0.5))


def test_eta_changes_ddim_and_an_eta_less_sampler_ignores_it(pipe):
    assert _differ(_render(pipe, sampler="DDIM", eta=0.8), _render(pipe, sampler="DDIM"))
    assert np.array_equal(_render(pipe, sampler="Euler", eta=0.5), _render(pipe, sampler="Euler"))


def test_ensd_changes_an_ancestral_samplers_pixels_but_not_a_deterministic_ones(pipe):
    assert _differ(_render(pipe, ensd=31337), _render(pipe))
    assert np.array_equal(_render(pipe, sampler="Euler", ensd=31337), _render(pipe, sampler="Euler"))


def test_a_sampler_with_a_fixed_eta_refuses_another():
    import diffusers

    from worker.samplers import make_scheduler

    base = diffusers.EulerAncestralDiscreteScheduler().config
    with pytest.raises(ValueError, match="sampler 'DPM\\+\\+ 2M SDE' renders only with its default eta 1"):
        make_scheduler(base, "DPM++ 2M SDE", "Automatic", eta=0.5)
    assert type(make_scheduler(base, "DPM++ 2M SDE", "Automatic", eta=1.0)).__name__ == "DPMSolverMultistepScheduler"
