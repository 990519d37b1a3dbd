"""The A1111 seed options in job specs (rng, variation seeds, seed resize) and sampler names."""

import pytest

from farm.expand import expand
from farm.samplers import parse_sampler
from farm.spec import SpecError, parse_spec

BASE = "prompt: a cat\ncheckpoint: m\nseed: 1-2\n"


def test_rng_variation_and_seed_resize_expand_into_tasks():
    spec = parse_spec(BASE + "rng: [cpu, NV]\nsubseed: 7\nsubseed_strength: [0, 0.5]\nseed_resize_from: 48x40\n")
    tasks = list(expand(spec))
    assert len(tasks) == 8
    assert {t.rng for t in tasks} == {"cpu", "nv"}
    blended = [t for t in tasks if t.subseed_strength == 0.5]
    assert blended and all(t.subseed == 7 for t in blended)
    plain = [t for t in tasks if t.subseed_strength == 0]
    assert plain and all(t.subseed is None for t in plain)  # strength 0: the same pixels, the same id
    assert all((t.seed_resize_width, t.seed_resize_height) == (48, 40) for t in tasks)


def test_tasks_without_the_new_keys_keep_their_ids():
    old = [t.id for t in expand(parse_spec(BASE))]
    same = [t.id for t in expand(parse_spec(BASE + "rng: cpu\nvariation_seed: 5\nvariation_strength: 0\n"))]
    assert old == same


@pytest.mark.parametrize("extra,message", [
    ("rng: gpu\n", "4:6: rng: unknown RNG source 'gpu' (GPU noise differs between GPU makers"),
    ("variation_strength: 0.5\n", "4:1: variation_strength: needs a variation_seed"),
    ("variation_seed: 1\nvariation_strength: 1.5\n", "variation_strength: 1.5 is out of range; expected 0 to 1"),
    ("seed_resize_from: 50x48\n", "seed_resize_from: 50 is not a multiple of 8"),
    ("sampler: DPM adaptive\n", "sampler 'DPM adaptive' has no diffusers equivalent; valid: Euler a"),
    ("sampler: DPM++ 2S a\n", "sampler 'DPM++ 2S a' has no diffusers equivalent"),
])
def test_bad_values_are_one_line_spec_errors(extra, message):
    with pytest.raises(SpecError) as info:
        parse_spec(BASE + extra, "job.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name,expected", [
    ("DPM++ SDE Karras", ("DPM++ SDE", "Karras")),
    ("DPM++ 2M SDE Heun", ("DPM++ 2M SDE Heun", "Automatic")),
    ("dpm++ 3m sde exponential", ("DPM++ 3M SDE", "Exponential")),
    ("Euler a", ("Euler a", "Automatic")),
    ("LCM", ("LCM", "Automatic")),
])
def test_a1111_sampler_names(name, expected):
    assert parse_sampler(name) == expected
