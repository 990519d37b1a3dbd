"""Worker rendering: tiny checkpoint written in A1111 layout, loaded offline, rendered per sampler.

Everything runs on CPU with a ~15 MB random-weight model at 64x64, 2 steps.
"""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/transformers are imported: never reach the hub

import shutil
from pathlib import Path

import numpy as np
import pytest

from farm.samplers import SAMPLERS, parse_sampler, sampler_names
from farm.task import RenderTask
from worker.pipelines import ModelLoadError, PipelineCache, configs_dir, load_pipeline
import worker.render
from worker.conditioning import encode
from worker.render import RenderError, render_images
from worker.samplers import make_scheduler
from worker.tiny import make_tiny, tiny_pipeline
from factories import make_task


def _task(**overrides) -> RenderTask:
    return make_task(**{"prompt": "a painting of a squirrel eating a burger", "seed": 1234, "sampler": "Euler a",
                        **overrides})


def _pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def _max_diff(a, b) -> int:
    return int(np.abs(_pixels(a) - _pixels(b)).max())


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return load_pipeline(tiny_checkpoint)


def test_make_tiny_is_byte_identical(tmp_path, tiny_checkpoint):
    again = make_tiny(tmp_path / "again")
    assert again == tmp_path / "again" / "Stable-diffusion" / "seedfarm-tiny.safetensors"
    assert again.read_bytes() == tiny_checkpoint.read_bytes()
    ours = tiny_checkpoint.with_name("seedfarm-tiny.config")
    theirs = again.with_name("seedfarm-tiny.config")
    files = sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(theirs) for p in theirs.rglob("*") if p.is_file())
    assert all((ours / f).read_bytes() == (theirs / f).read_bytes() for f in files)


def test_tokenizer_is_the_real_clip_bpe_offline():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(configs_dir() / "sd15" / "tokenizer"), local_files_only=True)
    assert len(tok) == 49408
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    assert tok.model_max_length == 77
    ids = tok("a painting of a squirrel eating a burger").input_ids
    assert ids == [49406, 320, 3086, 539, 320, 14004, 4371, 320, 6548, 49407]


def test_round_trip_through_a1111_layout_renders_the_same(pipe):
    """The file written in A1111 layout, loaded by load_pipeline, equals the pipeline it came from."""
    assert len(pipe.tokenizer) == 49408
    memory = tiny_pipeline()
    for sampler in ("Euler a", "DPM++ 2M"):
        task = _task(sampler=sampler)
        loaded_image = render_images(pipe, task)[0]
        memory_image = render_images(memory, task)[0]
        assert loaded_image.size == (64, 64)
        assert _pixels(loaded_image).std() > 1  # a real image, not a flat colour
        assert _max_diff(loaded_image, memory_image) <= 1


def _all_sampler_schedules():
    pairs = [parse_sampler(name) for name in sampler_names()]
    pairs += [(s, sch) for s, schedules in SAMPLERS.items() for sch in schedules if (s, sch) not in pairs]
    return pairs


@pytest.mark.parametrize("sampler,schedule", _all_sampler_schedules())
def test_every_sampler_renders(pipe, sampler, schedule):
    images = render_images(pipe, _task(sampler=sampler, schedule=schedule))  # NaN raises RenderError
    assert len(images) == 1 and images[0].size == (64, 64)


def test_sampler_mapping(pipe):
    base = pipe.scheduler.config
    dpm = make_scheduler(base, "DPM++ 2M", "Automatic")
    assert type(dpm).__name__ == "DPMSolverMultistepScheduler" and dpm.config.use_karras_sigmas
    sde = make_scheduler(base, "DPM++ 2M SDE", "Automatic")
    assert sde.config.algorithm_type == "sde-dpmsolver++" and sde.config.use_exponential_sigmas
    unipc = make_scheduler(base, "UniPC", "Automatic")
    assert unipc.config.solver_type == "bh1" and unipc.config.final_sigmas_type == "sigma_min"
    assert make_scheduler(base, "Euler", "SGM Uniform").config.timestep_spacing == "trailing"
    assert type(make_scheduler(base, "PLMS", "Automatic")).__name__ == "PNDMScheduler"
    # Built from the previous task's scheduler config, the result does not inherit its schedule.
    again = make_scheduler(dpm.config, "Euler", "Automatic")
    assert not again.config.use_karras_sigmas and again.config.timestep_spacing == "linspace"
    assert again.config.beta_schedule == "scaled_linear" and again.config.beta_start == 0.00085
    with pytest.raises(ValueError, match="no schedule type"):
        make_scheduler(base, "Euler a", "Karras")


def test_nan_output_is_a_render_error(pipe, monkeypatch):
    """UniPC bh1 with diffusers' default final_sigmas_type="zero" gives NaN latents (the reason
    make_scheduler sets sigma_min); the render must say so rather than save black images."""
    from diffusers import UniPCMultistepScheduler

    def unipc_zero(base, sampler, schedule, seeds=None, eta=None):
        ours = make_scheduler(base, "UniPC", "Uniform")  # a clean base, whatever ran before
        return UniPCMultistepScheduler.from_config(ours.config, final_sigmas_type="zero")

    monkeypatch.setattr(worker.render, "make_scheduler", unipc_zero)
    with pytest.raises(RenderError, match="NaN"):
        render_images(pipe, _task(sampler="UniPC"))


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE"])
def test_batch_image_equals_the_same_seed_alone(pipe, sampler):
    batch = render_images(pipe, _task(sampler=sampler, seed=500, batch_size=3))
    alone = render_images(pipe, _task(sampler=sampler, seed=501))
    assert len(batch) == 3
    assert _max_diff(batch[1], alone[0]) <= 1
    assert _max_diff(batch[0], batch[1]) > 1  # different seeds, different images


def test_corrupt_or_truncated_checkpoint_is_a_clear_error(tmp_path, tiny_checkpoint):
    data = tiny_checkpoint.read_bytes()
    cases = {"truncated": data[: len(data) // 2], "garbage": b"not a model " * 100, "empty": b""}
    for name, content in cases.items():
        broken = tmp_path / f"{name}.safetensors"
        broken.write_bytes(content)
        shutil.copytree(tiny_checkpoint.with_name("seedfarm-tiny.config"), tmp_path / f"{name}.config")
        with pytest.raises(ModelLoadError, match=f"{name}.safetensors") as info:
            load_pipeline(broken)
        assert "\n" not in str(info.value)
    pickled = tmp_path / "old.ckpt"
    pickled.write_bytes(b"\x80\x04not unpickled")
    with pytest.raises(ModelLoadError, match=r"old\.ckpt.*only \.safetensors"):
        load_pipeline(pickled)
    # The tiny weights without their own config folder do not fit the shipped SD1.5 config.
    stray = tmp_path / "stray.safetensors"
    shutil.copy(tiny_checkpoint, stray)
    with pytest.raises(ModelLoadError, match=r"stray\.safetensors: weight shapes do not match"):
        load_pipeline(stray)


def test_clip_skip_2_renders_and_differs(pipe):
    one = encode(pipe, "a red robot", clip_skip=1).embeds
    two = encode(pipe, "a red robot", clip_skip=2).embeds
    assert one.shape == two.shape == (1, 77, 32)
    assert not np.allclose(one.numpy(), two.numpy())
    image_1 = render_images(pipe, _task(clip_skip=1))[0]
    image_2 = render_images(pipe, _task(clip_skip=2))[0]
    assert _max_diff(image_1, image_2) > 0


def test_configs_dir_override_and_clear_error(tmp_path, monkeypatch):
    shipped = configs_dir()
    assert (shipped / "sd15" / "unet" / "config.json").is_file()
    monkeypatch.setenv("FARM_CONFIGS_DIR", str(shipped))
    assert configs_dir() == shipped
    monkeypatch.setenv("FARM_CONFIGS_DIR", str(tmp_path))
    with pytest.raises(ModelLoadError, match="FARM_CONFIGS_DIR"):
        configs_dir()


def test_cache_keeps_one_pipeline_and_records_load_time(tmp_path, tiny_checkpoint):
    cache = PipelineCache(keep=1)
    first = cache.get(tiny_checkpoint)
    assert cache.get(tiny_checkpoint) is first
    assert cache.load_seconds[cache.key(tiny_checkpoint)] > 0

    other = tmp_path / "other.safetensors"
    shutil.copy(tiny_checkpoint, other)
    shutil.copytree(tiny_checkpoint.with_name("seedfarm-tiny.config"), tmp_path / "other.config")
    second = cache.get(other)
    assert second is not first
    assert cache.loaded() == [other.resolve()]  # keep=1: the first one was evicted
    assert cache.get(tiny_checkpoint) is not first  # and is loaded again


def test_a_task_of_an_unknown_kind_fails_with_one_line(tiny_checkpoint, tmp_path):
    from farm.store import open_store
    from model_tree import run_task
    from worker.context import TaskError, WorkerContext

    task = _task(kind="watercolour").with_id()  # a kind no worker has (img2img, inpaint ... exist now)
    ctx = WorkerContext(models_dir=tiny_checkpoint.parent.parent)
    message = r"^task kind 'watercolour' is not one this worker renders \(txt2img, hires, .*\); update seedfarm on this worker$"
    with pytest.raises(TaskError, match=message):
        run_task(task, open_store(str(tmp_path)), ctx)
    assert ctx.cache is None  # refused before any checkpoint loads


def test_the_standin_renderer_goes_through_the_render_loop(tmp_path, monkeypatch):
    from farm.store import open_store
    from model_tree import run_task
    from worker.context import WorkerContext
    from worker.standin import StandinModels

    monkeypatch.setenv("FARM_STANDIN", "0,0")
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    (tmp_path / "models" / "Stable-diffusion" / "standin.safetensors").write_bytes(b"\0" * 16)
    ctx = WorkerContext(models_dir=tmp_path / "models")
    summary = run_task(_task(checkpoint="standin", batch_size=3).with_id(), open_store(str(tmp_path / "out")), ctx)
    assert isinstance(ctx.task_models, StandinModels)
    assert summary["images"] == 3 and len(list((tmp_path / "out" / "test" / "images").glob("*.png"))) == 3
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "test" / "records").glob("*.json")]
    assert [r["render_batch"] for r in records] == [1, 1, 1]  # a stand-in never batches
