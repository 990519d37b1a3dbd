"""Infotext both ways: the A1111 keys seedfarm writes for RNG and variation seeds, `farm info` on
PNG/JPEG/WebP (seedfarm's and A1111's), and `farm info --as-spec` re-rendering an image exactly."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import farm
from farm.hashes import sha256_file
from farm.cli import main
from farm.infotext import format_infotext, parse_infotext, read_parameters, task_parameters
from farm.recreate import RecreateError, spec_from_infotext
from farm.spec import SpecError, parse_spec
from farm.task import RenderTask
from factories import make_task

A1111_TEXT = (
    "a (red:1.2) fox, <lora:fluffy:0.8>\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 64x64, "
    "Model hash: {hash}, Model: renamed-model, Variation seed: 99, Variation seed strength: 0.25, "
    'Seed resize from: 48x48, Clip skip: 2, RNG: NV, Lora hashes: "fluffy: 0123456789ab", Version: v1.10.1'
)


def task(**changes) -> RenderTask:
    return make_task(**{"prompt": "a fox", "negative_prompt": "", "seed": 1000, "checkpoint": "m", "steps": 3,
                        **changes})


def test_rng_variation_and_seed_resize_keys_in_a1111_order():
    t = task(rng="nv", subseed=50, subseed_strength=0.3, seed_resize_width=48, seed_resize_height=32,
             clip_skip=2, batch_size=2)
    text = format_infotext(t.prompt, "", task_parameters(t, 1001))  # the second image of the batch
    assert text.endswith(
        "Seed: 1001, Size: 64x64, Model: m, Variation seed: 51, Variation seed strength: 0.3, "
        "Seed resize from: 48x32, Clip skip: 2, RNG: NV, Version: " + task_parameters(t, 0)["Version"]
    )
    plain = task_parameters(task(subseed=50, subseed_strength=0.0), 1000)
    assert "Variation seed" not in plain and "Seed resize from" not in plain and plain["RNG"] == "CPU"


def test_new_fields_at_their_defaults_keep_task_ids():
    assert task().with_id().id == task(rng="cpu", subseed=None, subseed_strength=0.0).with_id().id
    assert task(rng="nv").with_id().id != task().with_id().id


def _jpeg_or_webp(text: str, fmt: str) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + text.encode("utf-16-be")  # as A1111 writes it
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, fmt, exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_read_exif_user_comment(fmt):
    text = "ein Fuchs, überall\nSteps: 3, Sampler: Euler, Seed: 5, Size: 64x64"
    assert read_parameters(_jpeg_or_webp(text, fmt)) == text


def test_farm_info_prints_text_json_and_errors(tmp_path):
    image = tmp_path / "a1111.jpg"
    image.write_bytes(_jpeg_or_webp(A1111_TEXT.format(hash="abcdef0123"), "JPEG"))
    runner = CliRunner()
    out = runner.invoke(main, ["info", str(image)])
    assert out.exit_code == 0 and out.output.startswith("a (red:1.2) fox")
    data = json.loads(runner.invoke(main, ["info", str(image), "--json"]).output)
    assert data["RNG"] == "NV" and data["Variation seed"] == 99 and data["Seed resize from-1"] == 48
    assert data["negative_prompt"] == "blurry, lowres"
    bare = tmp_path / "bare.png"
    Image.new("RGB", (8, 8)).save(bare)
    result = farm("info", str(bare))
    assert result.returncode == 1 and "has no A1111 'parameters' text" in result.stderr
    assert "Traceback" not in result.stderr


def test_as_spec_finds_the_model_by_hash_and_validates(tmp_path, tiny_models):
    digest = sha256_file(tiny_models / "Stable-diffusion" / "seedfarm-tiny.safetensors")
    text = A1111_TEXT.format(hash=digest[:10])
    spec_text = spec_from_infotext(text, tiny_models)
    # the image's LoRA is not in these models: the spec says so before anything renders
    with pytest.raises(SpecError, match="unknown LoRA 'fluffy'"):
        parse_spec(spec_text, "sent.yaml", models_dir=tiny_models)
    assert parse_spec(spec_text, "sent.yaml").values["prompt"] == ["a (red:1.2) fox, <lora:fluffy:0.8>"]
    spec = parse_spec(spec_text.replace(", <lora:fluffy:0.8>", ""), "sent.yaml", models_dir=tiny_models)
    values = spec.values
    assert values["checkpoint"] == ["seedfarm-tiny"]  # the infotext's "renamed-model", found by hash
    assert values["sampler"] == ["DPM++ 2M Karras"] and values["steps"][0] == 3
    assert values["rng"] == ["nv"] and values["variation_seed"][0] == 99
    assert values["variation_strength"][0] == 0.25 and values["seed_resize_from"] == ["48x48"]
    assert values["clip_skip"][0] == 2 and values["cfg"][0] == 6.5 and values["size"] == ["64x64"]
    assert values["prompt"] == ["a (red:1.2) fox"]
    # unknown hash and name: the spec still validates, with a note saying so
    lost = spec_from_infotext(A1111_TEXT.format(hash="0000000000"), tiny_models)
    assert lost.startswith("# note: checkpoint 'renamed-model' (hash 0000000000) not found in")
    parse_spec(lost, "lost.yaml")
    gpu = spec_from_infotext(A1111_TEXT.format(hash="x").replace(", RNG: NV", ""), None)
    assert "rng: nv" in gpu and "A1111's GPU noise" in gpu
    with pytest.raises(RecreateError, match="no diffusers equivalent"):
        spec_from_infotext(A1111_TEXT.format(hash="x").replace("DPM++ 2M", "DPM fast"), None)


def test_rendered_image_re_renders_identically_from_its_infotext(tmp_path, tiny_models):
    """`farm run` -> PNG -> `farm info --as-spec` -> `farm validate` -> `farm run`: same pixels."""
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "prompt: a [red|blue] lighthouse, (storm:1.3)\nnegative_prompt: blurry\ncheckpoint: seedfarm-tiny\n"
        "seed: 21\nsize: 64x64\nsteps: 3\nsampler: DPM++ SDE Karras\nrng: nv\nvariation_seed: 5\n"
        "variation_strength: 0.5\nseed_resize_from: 48x48\nclip_skip: 2\n"
    )
    models = ["--models", str(tiny_models)]
    assert farm("run", str(spec), "--out", str(tmp_path / "one"), *models).returncode == 0
    (first,) = (tmp_path / "one").rglob("images/*.png")
    text = read_parameters(first)
    _, _, params = parse_infotext(text)
    assert params["RNG"] == "NV" and params["Variation seed"] == 5 and params["Sampler"] == "DPM++ SDE"
    info = farm("info", str(first), "--as-spec", *models)
    assert info.returncode == 0, info.stderr
    again = tmp_path / "again.yaml"
    again.write_text(info.stdout)
    assert farm("validate", str(again), *models).returncode == 0
    assert farm("run", str(again), "--out", str(tmp_path / "two"), *models).returncode == 0
    (second,) = (tmp_path / "two").rglob("images/*.png")
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))
    assert read_parameters(second) == text


@pytest.mark.parametrize("sampler, key", [("Euler a", "Eta"), ("DDIM", "Eta DDIM")])
def test_eta_and_ensd_round_trip_through_as_spec(sampler, key):
    """An image with eta and ENSD -> `farm info --as-spec` -> the same task again (same id)."""
    from farm.expand import expand

    original = task(sampler=sampler, eta=0.25, ensd=31337, seed=77).with_id()
    text = format_infotext(original.prompt, "", task_parameters(original, 77))
    assert f"{key}: 0.25" in text and ("ENSD: 31337" in text) == (sampler == "Euler a")
    spec_text = spec_from_infotext(text)
    assert "eta: 0.25" in spec_text
    (again,) = expand(parse_spec(spec_text, "again.yaml"))
    assert again.eta == 0.25 and again.sampler == sampler
    if sampler == "Euler a":  # A1111 writes ENSD only for the samplers it uses it with
        assert "ensd: 31337" in spec_text and again.ensd == 31337
        assert again.id == original.id


def test_a1111_eta_and_ensd_become_spec_keys():
    text = A1111_TEXT.replace("RNG: NV", "ENSD: 31337, RNG: NV, Eta: 0.67").replace("DPM++ 2M", "Euler a").replace(
        "Schedule type: Karras, ", "")
    values = parse_spec(spec_from_infotext(text), "sent.yaml").values
    assert list(values["eta"]) == [0.67] and list(values["ensd"]) == [31337]
    plain = parse_spec(spec_from_infotext(A1111_TEXT.replace("Schedule type: Karras, ", "")), "p.yaml").values
    assert "eta" not in plain and "ensd" not in plain
