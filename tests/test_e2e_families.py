"""End to end, the families built from parts: the tiny model of every family written into one
ComfyUI models folder by `farm models make-tiny --family`, rendered by the real CLI (`farm run`)
and by a real `farm worker` through Redis, read back by `farm info --as-spec` and re-rendered to
the same pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import farm
from farm.infotext import parse_infotext, read_parameters
from farm.ledger import Ledger
from test_e2e_farm import wait_for

FAMILIES = {  # family -> the file its sweep renders (each written as make-tiny writes it)
    "Flux.1 [dev]": "flux1-dev-tiny",
    "Flux.1 [schnell]": "flux1-schnell-tiny-Q8_0",
    "SD3.5 Medium": "sd35-medium-tiny_fp8_e4m3fn",
    "SD3.5 Large": "sd35-large-tiny-Q8_0",
    "Z-Image Turbo": "zimage-tiny-fp8",
    "Flux.2 [klein] 4B": "flux2-klein-4b-tiny-Q8_0",
    "Flux.2 [klein] 9B": "flux2-klein-9b-tiny",
    "SD1.5": "seedfarm-tiny",
}


@pytest.fixture(scope="module")
def comfy_models(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("ComfyUI") / "models"
    for family in FAMILIES:
        result = farm("models", "make-tiny", str(models), "--family", family)
        assert result.returncode == 0, result.stderr
    return models


def test_one_sweep_renders_every_family_with_its_own_defaults(comfy_models, tmp_path):
    spec = tmp_path / "families.yaml"
    spec.write_text("prompt: a (red:1.2) fox in the snow\nnegative_prompt: blurry\n"
                    f"checkpoint: [{', '.join(FAMILIES.values())}]\nseed: 3\nsize: 64x64\nsteps: 2\n")
    result = farm("run", str(spec), "--out", str(tmp_path / "out"), "--models", str(comfy_models))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in next((tmp_path / "out").rglob("manifest.jsonl")).read_text().splitlines()]
    by_model = {}
    for record in records:
        _, _, params = parse_infotext(record["parameters"])
        by_model[params["Model"]] = params
    assert set(by_model) == set(FAMILIES.values())
    dev, sd35, zimage = by_model["flux1-dev-tiny"], by_model["sd35-medium-tiny_fp8_e4m3fn"], by_model["zimage-tiny-fp8"]
    assert (dev["Sampler"], dev["Schedule type"], dev["CFG scale"], dev["Distilled CFG Scale"]) == ("Euler", "Simple", 1, 3.5)
    assert [dev[f"Module {i}"] for i in (1, 2, 3)] == ["ae", "clip_l", "t5xxl_fp16"]
    assert sd35["CFG scale"] == 4.5 and sd35["Module 1"] == "sd35_vae" and "Distilled CFG Scale" not in sd35
    assert zimage["Module 2"] == "qwen_3_4b"
    klein4, klein9 = by_model["flux2-klein-4b-tiny-Q8_0"], by_model["flux2-klein-9b-tiny"]
    assert [klein4[f"Module {i}"] for i in (1, 2)] == ["flux2-vae", "qwen_3_4b"] and klein4["CFG scale"] == 1
    assert [klein9[f"Module {i}"] for i in (1, 2)] == ["flux2-vae", "qwen_3_8b"] and klein9["Steps"] == 2
    assert by_model["seedfarm-tiny"]["Sampler"] == "DPM++ 2M" and "Module 1" not in by_model["seedfarm-tiny"]
    # a picture, not a flat field, for every family
    for image in (tmp_path / "out").rglob("images/*.png"):
        assert np.asarray(Image.open(image)).std() > 5


def test_flux_image_re_renders_identically_from_its_infotext(comfy_models, tmp_path):
    """`farm run` -> PNG -> `farm info --as-spec` -> `farm run`: the same pixels (shift,
    distilled CFG, the schedule type and the parts all travel through the infotext)."""
    spec = tmp_path / "flux.yaml"
    spec.write_text("prompt: a lighthouse, (storm:1.3)\ncheckpoint: flux1-dev-tiny-Q8_0\nseed: 9\nsize: 64x48\n"
                    "steps: 3\nschedule: Beta\nshift: 2\ndistilled_cfg: 2.5\n")
    models = ["--models", str(comfy_models)]
    assert farm("run", str(spec), "--out", str(tmp_path / "one"), *models).returncode == 0
    (first,) = (tmp_path / "one").rglob("images/*.png")
    info = farm("info", str(first), "--as-spec", *models)
    assert info.returncode == 0, info.stderr
    assert "shift: 2" in info.stdout and "distilled_cfg: 2.5" in info.stdout and "t5xxl_fp16" in info.stdout
    again = tmp_path / "again.yaml"
    again.write_text(info.stdout)
    result = farm("run", str(again), "--out", str(tmp_path / "two"), *models)
    assert result.returncode == 0, result.stderr
    (second,) = (tmp_path / "two").rglob("images/*.png")
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))
    assert read_parameters(second) == read_parameters(first)


def test_a_worker_renders_flux_and_zimage_through_redis(comfy_models, redis_server, start_worker, tmp_path):
    worker = start_worker(redis_server.url, comfy_models, "gamer")
    worker.wait_ready()
    spec = tmp_path / "remote.yaml"
    spec.write_text("prompt: a cabin\ncheckpoint: [flux1-schnell-tiny, zimage-tiny]\nseed: 1-2\nsize: 64x64\n"
                    "steps: 2\n")
    store = tmp_path / "renders"
    result = farm("submit", str(spec), "--broker", redis_server.url, "--store", str(store), "--models", str(comfy_models))
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    ledger = Ledger(redis_server.client())
    wait_for(lambda: ledger.job_info(job).get("status") == "complete", 180, f"job {job}")
    records = [json.loads(line) for line in (store / job / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 4 and {r["worker"] for r in records} == {"gamer"}
    models = {parse_infotext(r["parameters"])[2]["Model"] for r in records}
    assert models == {"flux1-schnell-tiny", "zimage-tiny"}
    # `farm workers` shows how the loaded model sits on the worker: stored precision, compute dtype
    wait_for(lambda: "as float32" in farm("workers", "--broker", redis_server.url).stdout, 15, "the heartbeat")


def test_a_flux_lora_in_the_prompt_is_applied_and_named_in_the_infotext(comfy_models, tmp_path):
    from farm.models import lora_hash
    from worker.tiny_flux1 import write_tiny_lora

    lora = write_tiny_lora(comfy_models, "fluxstyle", layout="kohya")
    spec = tmp_path / "lora.yaml"
    spec.write_text("prompt: a cabin\ncheckpoint: flux1-dev-tiny\nseed: 4\nsize: 64x64\nsteps: 2\n"
                    "lora: [None, fluxstyle]\nlora_weight: 0.8\n")
    result = farm("run", str(spec), "--out", str(tmp_path / "out"), "--models", str(comfy_models))
    assert result.returncode == 0, result.stderr
    images = {}
    for image in (tmp_path / "out").rglob("images/*.png"):
        prompt, _, params = parse_infotext(read_parameters(image))
        images[params.get("Lora hashes")] = np.asarray(Image.open(image)).astype(int)
        if "<lora:" in prompt:
            assert params["Lora hashes"] == f"fluxstyle: {lora_hash(lora)[:12]}"
    assert set(images) == {None, f"fluxstyle: {lora_hash(lora)[:12]}"}
    assert np.abs(images[None] - images[f"fluxstyle: {lora_hash(lora)[:12]}"]).max() > 3
