"""Upscaler models (worker/upscalers.py, farm/upscalers.py): the tiny files in their real key layouts
load (pickles only when allowed), a file of no known architecture or a broken one is one line,
tiled equals untiled, A1111's pass rule, the registry and `farm models list`, and hires fix with a
model upscaler from the spec to the pixels and the infotext."""

from __future__ import annotations

import importlib
import io
import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import farm
from factories import make_task
from farm.expand import expand
from farm.hashes import sha256_file
from farm.infotext import parse_infotext, read_parameters
from farm.models import Registry
from farm.spec import SpecError, parse_spec
from farm.store import open_store
from farm.upscalers import upscaler_architecture
from worker.safe_load import ModelLoadError
from worker.tiny_upscalers import write_tiny_upscalers
from worker.upscalers import Upscaler, load_upscaler, upscale

BASE = "prompt: a red robot\ncheckpoint: seedfarm-tiny\nseed: 7\nsize: 64x64\nsteps: 2\nsampler: Euler a\n"
SCALES = {"tiny-esrgan-2x": 2, "tiny-realesrgan-x4plus": 4, "tiny-realesr-compact-x2": 2, "tiny-compact-2x": 2}


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory):
    """The tiny checkpoint's models folder plus the tiny upscalers (as `farm models make-tiny` writes them)."""
    folder = tmp_path_factory.mktemp("upscale-models")
    os.symlink(tiny_models / "Stable-diffusion", folder / "Stable-diffusion")
    write_tiny_upscalers(folder)
    return folder


def _noise(width: int = 40, height: int = 32, seed: int = 1) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


# ---- spandrel without torchvision ------------------------------------------------------------------

def test_spandrel_imports_without_torchvision_and_leaves_no_stand_in():
    from worker.upscalers import import_spandrel

    spandrel = import_spandrel()
    assert spandrel.__version__ == "0.4.2"
    assert "torchvision" not in sys.modules  # transformers and diffusers must not take the stand-in for it
    # RestoreFormer (a face restorer) took the stand-in's function when it imported
    normalize = importlib.import_module("spandrel.architectures.RestoreFormer").tv_normalize
    with pytest.raises(ModelLoadError, match="needs torchvision"):
        normalize(torch.zeros(1, 3, 2, 2), [0.5] * 3, [0.5] * 3)


# ---- the tiny files in their layouts -----------------------------------------------------------------

def test_each_tiny_file_loads_in_its_layout_and_pickles_only_when_allowed(models):
    files = Registry(models).files("upscaler")
    assert {name for name in files if "/" not in name} == {*SCALES, *(f"{s}-pickled" for s in SCALES)}
    image = _noise()
    for stem, scale in SCALES.items():
        safe = load_upscaler(files[stem].path)
        assert safe.scale == scale and safe.architecture in ("ESRGAN", "RealESRGAN Compact")
        out = safe.run(image)
        assert out.size == (40 * scale, 32 * scale) and out.mode == "RGB"
        pickled = files[f"{stem}-pickled"].path
        with pytest.raises(ModelLoadError) as refused:
            load_upscaler(pickled)
        assert str(refused.value).startswith(f"{pickled.name}: a pickled upscaler model; only .safetensors")
        assert "\n" not in str(refused.value)
        same = load_upscaler(pickled, allow_pickle=True).run(image)  # params_ema / params unwrapped
        assert np.array_equal(np.asarray(same), np.asarray(out))
    # the header tells the architecture for `farm models list`, and the old and new ESRGAN names agree
    assert upscaler_architecture(files["tiny-esrgan-2x"].path) == "ESRGAN"
    assert upscaler_architecture(files["tiny-realesrgan-x4plus"].path) == "ESRGAN"
    assert upscaler_architecture(files["tiny-compact-2x"].path) == "RealESRGAN Compact"
    assert upscaler_architecture(files["tiny-compact-2x-pickled"].path) == "?"
    assert load_upscaler(files["tiny-compact-2x"].path) is load_upscaler(files["tiny-compact-2x"].path)  # cached


def test_unknown_architecture_broken_and_hostile_files_are_one_line(tmp_path):
    from safetensors.torch import save_file

    unknown = tmp_path / "mystery.safetensors"
    save_file({"encoder.weight": torch.zeros(4, 4)}, str(unknown))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    broken = tmp_path / "broken.safetensors"  # ESRGAN's names, shapes that fit no network
    save_file({"model.0.weight": torch.zeros(8, 3, 3, 3), "model.1.sub.0.RDB1.conv1.0.weight": torch.zeros(1)},
              str(broken))
    hostile = tmp_path / "hostile.pth"

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    hostile.write_bytes(pickle.dumps({"model.0.weight": Boom()}, protocol=2))
    expected = {unknown: "not an upscaler model of an architecture seedfarm knows",
                corrupt: "not a readable safetensors file", broken: "a broken upscaler model file",
                hostile: "refused: the file wants to run code when loaded"}
    for path, message in expected.items():
        with pytest.raises(ModelLoadError) as e:
            load_upscaler(path, allow_pickle=True)
        text = str(e.value)
        assert text.startswith(f"{path.name}: ") and message in text and "\n" not in text, text


# ---- tiles, and A1111's passes ------------------------------------------------------------------------

def test_tiled_equals_untiled_and_a_tile_out_of_memory_is_halved(models):
    model = load_upscaler(models / "upscale_models" / "tiny-compact-2x.safetensors")
    x = torch.from_numpy(np.asarray(_noise(64, 48), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    whole = model._model(x)
    for tile, overlap in ((32, 16), (28, 16), (40, 24)):  # even and uneven tile starts
        tiled = Upscaler("t", model.descriptor, tile, overlap).tiled(x)
        assert tiled.shape == whole.shape == (1, 3, 96, 128)
        assert (tiled - whole).abs().max() < 1e-4
    # tiles with too little overlap for the network's reach do differ: the test above is not vacuous
    assert (Upscaler("t", model.descriptor, 16, 4).tiled(x) - whole).abs().max() > 1e-3

    small = Upscaler("t", model.descriptor, 256, 16)
    real = small._model

    def short_of_memory(patch):
        if max(patch.shape[2:]) > 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(patch)

    small._model = short_of_memory
    out = small.run(_noise(160, 120))  # 256 -> the image's 160 halved: 80, still too large -> 40
    assert small.tile == 40 and out.size == (320, 240)


def test_upscale_follows_a1111s_passes_then_lanczos(models):
    model = load_upscaler(models / "ESRGAN" / "tiny-esrgan-2x.safetensors")
    passes = []
    run = model.run
    model.run = lambda im: passes.append(im.size) or run(im)
    try:
        image = _noise(40, 32)
        assert upscale(image, 3, model).size == (120, 96) and passes == [(40, 32), (80, 64)]  # 2x twice, Lanczos
        passes.clear()
        assert upscale(image, 2.5, model).size == (96, 80) and len(passes) == 2  # 100x80 -> multiples of 8
        passes.clear()
        assert upscale(image, 1.5, model).size == (56, 48) and len(passes) == 1
    finally:
        del model.run


# ---- the registry, the spec, the task -----------------------------------------------------------------

def test_farm_models_list_shows_upscalers_with_their_architecture(models):
    from farm.cli import main

    result = CliRunner().invoke(main, ["models", "list", "--models", str(models), "--kind", "upscaler"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[-1]: line.split() for line in result.output.splitlines()}
    assert rows["tiny-esrgan-2x"][:2] == ["upscaler", "ESRGAN"]
    assert rows["tiny-compact-2x"][:3] == ["upscaler", "RealESRGAN", "Compact"]
    assert rows["tiny-esrgan-2x-pickled"][:2] == ["upscaler", "?"] and len(rows) == 8


def test_hr_upscaler_takes_model_names_and_pins_the_file(models):
    spec = parse_spec(BASE + "hr_upscaler: [lanczos, tiny-esrgan-2x, tiny-compact-2x]\n", "job.yaml", models)
    tasks = list(expand(spec))
    assert [t.hr_upscaler for t in tasks] == ["Lanczos", "tiny-esrgan-2x", "tiny-compact-2x"]
    assert tasks[0].upscaler_hash is None
    assert tasks[1].upscaler_hash == sha256_file(models / "ESRGAN" / "tiny-esrgan-2x.safetensors")
    assert tasks[2].upscaler_hash == sha256_file(models / "upscale_models" / "tiny-compact-2x.safetensors")
    # a coordinator without the models folder re-expands a job from its record to the same tasks
    again = parse_spec(spec.source_text, "job.yaml", None, spec.checkpoint_hashes())
    assert [t.id for t in expand(again)] == [t.id for t in tasks]
    with pytest.raises(SpecError) as e:
        parse_spec(BASE + "hr_upscaler: [Latent, 4x-UltraSharp]\n", "job.yaml", models)
    text = str(e.value)
    assert text.startswith("job.yaml:7:23: hr_upscaler: unknown hires upscaler '4x-UltraSharp'; valid: Latent, ")
    assert "upscaler models here: tiny-compact-2x, tiny-compact-2x-pickled," in text and "\n" not in text
    with pytest.raises(SpecError, match="'Tiny-ESRGAN-2x' \\(did you mean 'tiny-esrgan-2x'\\?\\)"):
        parse_spec(BASE + "hr_upscaler: Tiny-ESRGAN-2x\n", "job.yaml", models)
    # without a models folder a model name is taken as given (the worker resolves it)
    (task,) = expand(parse_spec(BASE + "hr_upscaler: 4x-UltraSharp\n", "job.yaml"))
    assert task.hr_upscaler == "4x-UltraSharp" and task.upscaler_hash is None


# ---- hires fix with an upscaler model -------------------------------------------------------------------

def _render(tasks, models, tmp_path, allow_pickle=False):
    from worker.context import configure
    from worker.render_loop import render_tasks

    store = open_store(str(tmp_path / "out"))
    ctx = configure(models, allow_pickle=allow_pickle, max_batch=2)
    failures = {}
    counts, _ = render_tasks(tasks, store, ctx, lambda t, s, f: failures.setdefault(t.index, f))
    ctx.writer.flush()
    return store, counts, failures


def test_hires_with_an_upscaler_model_renders_and_names_it(models, tmp_path):
    sha = sha256_file(models / "RealESRGAN" / "tiny-realesrgan-x4plus.safetensors")
    common = dict(job="hires", kind="hires", denoising_strength=0.6, hr_steps=2, hr_scale=2.0)
    tasks = [make_task(index=0, hr_upscaler="tiny-realesrgan-x4plus", upscaler_hash=sha, **common),
             make_task(index=1, hr_upscaler="Lanczos", **common),
             make_task(index=2, hr_upscaler="tiny-realesrgan-x4plus", upscaler_hash="0" * 64, **common),
             make_task(index=3, hr_upscaler="tiny-compact-2x-pickled", **common)]
    store, counts, failures = _render(tasks, models, tmp_path)
    assert counts["images"] == 2 and failures[0] is None and failures[1] is None
    assert "has hash" in failures[2] and "expanded against 0000000000" in failures[2]
    assert "a pickled upscaler model" in failures[3] and "--allow-pickle" in failures[3]
    pixels = {}
    for key in store.list_keys("hires/records/"):
        record = json.loads(store.read_bytes(key))
        _, _, params = parse_infotext(record["parameters"])
        with Image.open(io.BytesIO(store.read_bytes(f"hires/{record['image']}"))) as im:
            assert im.size == (128, 128)
            pixels[params["Hires upscaler"]] = np.asarray(im).astype(int)
    assert set(pixels) == {"tiny-realesrgan-x4plus", "Lanczos"}  # `Hires upscaler: <name>`, as A1111
    assert np.abs(pixels["tiny-realesrgan-x4plus"] - pixels["Lanczos"]).max() > 8  # the model made the pixels
    _, counts, failures = _render([tasks[3]], models, tmp_path / "pickles", allow_pickle=True)
    assert counts["images"] == 1 and failures[3] is None


def test_farm_run_of_hires_with_upscaler_models(models, tmp_path):
    spec = tmp_path / "hires-models.yaml"
    spec.write_text(BASE + "hr_upscaler: [tiny-esrgan-2x, tiny-compact-2x]\nhr_scale: 1.5\ndenoising_strength: 0.5\n")
    result = farm("run", str(spec), "--out", str(tmp_path / "out"), "--models", str(models))
    assert result.returncode == 0, result.stderr
    images = sorted((tmp_path / "out").rglob("images/*.png"))
    assert len(images) == 2
    names = set()
    for path in images:
        _, _, params = parse_infotext(read_parameters(path))
        names.add(params["Hires upscaler"])
        assert params["Hires upscale"] == 1.5 and Image.open(path).size == (96, 96)
    assert names == {"tiny-esrgan-2x", "tiny-compact-2x"}
