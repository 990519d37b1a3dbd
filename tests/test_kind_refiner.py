"""SDXL refiner (A1111 1.10's Refiner): its spec keys and located errors, its infotext both ways,
A1111's switch rule, the refiner taking over in the render (changes the image, switch 1 is no
refiner, a batch image equals it alone), routing and VRAM, and end to end: `farm models make-tiny
DIR` then `farm run jobs/refiner.yaml`, an as-spec round trip, and a real worker through Redis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, farm
from factories import make_task
from farm.expand import expand
from farm.hashes import sha256_file
from farm.infotext import format_infotext, parse_infotext, read_parameters, task_parameters
from farm.params import spec_entries_from_infotext
from farm.spec import SpecError, parse_spec

XL, REFINER = "seedfarm-tiny-xl", "seedfarm-tiny-xl-refiner"
BASE = f"prompt: a red robot\nnegative_prompt: blurry\ncheckpoint: {XL}\nseed: 7\nsize: 64x64\nsteps: 4\nsampler: Euler a\n"


@pytest.fixture(scope="module")
def models(tmp_path_factory, private_hash_cache) -> Path:
    """What the plain `farm models make-tiny DIR` writes: SD1.5, SDXL and the SDXL refiner."""
    models = tmp_path_factory.mktemp("refiner") / "models"
    result = farm("models", "make-tiny", str(models))
    assert result.returncode == 0, result.stderr
    assert [Path(line).name for line in result.stdout.split()] == [
        "seedfarm-tiny.safetensors", f"{XL}.safetensors", f"{REFINER}.safetensors"]
    return models


def _refiner_file(models: Path) -> Path:
    return models / "Stable-diffusion" / f"{REFINER}.safetensors"


def _error(extra: str, models: Path | None = None, base: str = BASE) -> str:
    with pytest.raises(SpecError) as e:
        parse_spec(base + extra, "job.yaml", models)
    return str(e.value)


# ---- the spec keys ---------------------------------------------------------------------------------

def test_refiner_keys_are_axes_pinned_by_name_and_hash(models):
    spec = parse_spec(BASE + f"refiner: [None, {REFINER}]\nrefiner_switch_at: [0.5, 0.8]\n", "job.yaml", models)
    tasks = list(expand(spec))
    assert [(t.refiner, t.refiner_switch_at) for t in tasks] == [("", 0.5), ("", 0.8), (REFINER, 0.5), (REFINER, 0.8)]
    assert {t.refiner_hash for t in tasks if t.refiner} == {sha256_file(_refiner_file(models))}
    assert {t.kind for t in tasks} == {"txt2img"} and len({t.id for t in tasks}) == 4
    assert spec.swept_axes() == ["refiner", "refiner_switch_at"]
    # the job record keeps the refiner's hash: re-expanded without the models folder, the same tasks
    again = parse_spec(BASE + f"refiner: [None, {REFINER}]\nrefiner_switch_at: [0.5, 0.8]\n", "job.yaml",
                       checkpoint_hashes=spec.checkpoint_hashes())
    assert [t.id for t in expand(again)] == [t.id for t in tasks]
    (plain,) = expand(parse_spec(BASE, "job.yaml"))  # without the keys: the fields at their defaults
    assert (plain.refiner, plain.refiner_hash, plain.refiner_switch_at) == ("", None, 0.8)


@pytest.mark.parametrize("extra, base, where, message", [
    ("refiner: nosuch\n", BASE, "job.yaml:8:10", "refiner: unknown checkpoint 'nosuch'"),
    (f"refiner: {XL}\n", BASE, "job.yaml:8:10", f"refiner: '{XL}' is a checkpoint of SDXL, not an SDXL refiner"),
    (f"refiner: {REFINER}\n", BASE.replace(XL, "seedfarm-tiny"), "job.yaml:8:1",
     "refiner: checkpoint 'seedfarm-tiny' is SD1.5; seedfarm's refiner takes over SDXL renders only"),
    ("", BASE.replace(XL, REFINER), "job.yaml:3:13", f"checkpoint: '{REFINER}' is an SDXL refiner"),
    (f"refiner: {REFINER}\nhr_scale: 2\n", BASE, "job.yaml:8:1", "refiner: not supported with hires fix (hr_scale)"),
    ("refiner_switch_at: 0.5\n", BASE, "job.yaml:8:1", "refiner_switch_at: says when the refiner takes over, and "
                                                       "there is none"),
    (f"refiner: {REFINER}\nrefiner_switch_at: 0\n", BASE, "job.yaml:9:20", "refiner_switch_at: 0 is out of range"),
    (f"refiner: {REFINER}\nrefiner_switch_at: 1.5\n", BASE, "job.yaml:9:20", "refiner_switch_at: 1.5 is out of range"),
])
def test_refiner_errors_are_located(models, extra, base, where, message):
    text = _error(extra, models, base)
    assert text.startswith(where + ":") and message in text and "\n" not in text


# ---- infotext both ways ----------------------------------------------------------------------------

def test_refiner_infotext_as_a1111_writes_and_reads_it():
    task = make_task(checkpoint=XL, refiner=REFINER, refiner_hash="793df69b36" + "0" * 54, refiner_switch_at=0.75)
    params = task_parameters(task, 7)
    assert params["Refiner"] == f"{REFINER} [793df69b36]" and params["Refiner switch at"] == 0.75
    text = format_infotext(task.prompt, task.negative_prompt, params)
    assert f"Refiner: {REFINER} [793df69b36], Refiner switch at: 0.75" in text
    _, _, back = parse_infotext(text)
    entries = spec_entries_from_infotext({**back, "Prompt": task.prompt, "Negative prompt": ""}, [])
    assert (entries["refiner"], entries["refiner_switch_at"]) == (REFINER, 0.75)
    # switch at 1: the refiner never takes over, and A1111 writes neither key
    assert "Refiner" not in task_parameters(task.model_copy(update={"refiner_switch_at": 1.0}), 7)
    # A1111's own infotext (its checkpoint title carries the short hash)
    a1111 = ("a cat\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 1024x1024, "
             "Model: sd_xl_base_1.0, Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.8, Version: v1.10.1")
    _, _, back = parse_infotext(a1111)
    entries = spec_entries_from_infotext({**back, "Prompt": "a cat", "Negative prompt": ""}, [])
    assert (entries["refiner"], entries["refiner_switch_at"]) == ("sd_xl_refiner_1.0", 0.8)


# ---- A1111's switch rule ---------------------------------------------------------------------------

def test_the_switch_follows_a1111s_sigma_rule():
    from worker.refiner import fraction_done, switch_step
    from worker.samplers import make_scheduler

    config = json.loads((REPO / "configs" / "sdxl" / "scheduler" / "scheduler_config.json").read_text())
    euler = make_scheduler(config, "Euler", "Automatic")
    euler.set_timesteps(4)  # A1111's (k-diffusion's) Euler: timesteps 999, 666, 333, 0
    assert [round(fraction_done(euler, i), 3) for i in range(4)] == [0.0, 0.333, 0.666, 0.999]
    assert switch_step(euler, 4, 0.5) == 2 and switch_step(euler, 4, 0.8) == 3 and switch_step(euler, 4, 1.0) is None
    # Karras sigmas fall between training timesteps: the nearest training sigma decides, as in A1111
    karras = make_scheduler(config, "DPM++ 2M", "Karras")
    at = switch_step(karras, 10, 0.8)
    assert fraction_done(karras, at) >= 0.8 > fraction_done(karras, at - 1)


# ---- the refiner in the render ---------------------------------------------------------------------

def test_the_refiner_changes_the_image_and_a_batch_image_equals_it_alone(models):
    from worker.kinds import txt2img
    from worker.prepare import TaskModels
    from worker.render import Slot

    from worker.context import model_files

    plain = make_task(checkpoint=XL, sampler="Euler a", steps=4, batch_size=2,
                      prompt="a [red:blue:2] robot")  # prompt editing goes on with the refiner's encoder
    # from step 1 of 4 (the tiny UNets change an image a little per step: more steps, more change)
    refined = plain.model_copy(update={"refiner": REFINER, "refiner_hash": sha256_file(_refiner_file(models)),
                                       "refiner_switch_at": 0.2})
    files = model_files(refined, models)
    assert files.part("refiner") == _refiner_file(models)
    pipe = TaskModels(models).load(files)
    unet, vae = pipe.unet, pipe.vae

    def render(task, *seeds):
        return [np.asarray(im).astype(int) for im in txt2img.render(pipe, [Slot(task, i) for i in seeds])]

    none, refined_batch, refined_alone = render(plain, 0), render(refined, 0, 1), render(refined, 1)
    assert pipe.unet is unet and pipe.vae is vae  # the base's own parts again after the render
    later = render(refined.model_copy(update={"refiner_switch_at": 0.5}), 0)
    assert np.abs(none[0] - refined_batch[0]).mean() > 2  # the refiner's UNet denoised the last steps
    assert np.abs(refined_batch[1] - refined_alone[0]).max() <= 1
    assert np.abs(later[0] - refined_batch[0]).mean() > 1  # a later switch, another image
    # switch at 1: the refiner never takes over (A1111's fraction done stops at 0.999): the base's image
    assert np.array_equal(render(refined.model_copy(update={"refiner_switch_at": 1.0}), 0)[0], none[0])


def test_a_refiner_is_not_rendered_as_a_checkpoint_nor_composable_prompts_with_it(models):
    from worker.context import WorkerContext
    from worker.render_loop import render_tasks
    from farm.store import open_store

    store = open_store("memory://refiner")
    failures = {}
    ctx = WorkerContext(models_dir=models)
    tasks = [make_task(index=0, job="r", checkpoint=REFINER),
             make_task(index=1, job="r", checkpoint=XL, prompt="a cat AND a dog", refiner=REFINER)]
    render_tasks(tasks, store, ctx, lambda t, s, f: failures.setdefault(t.index, f))
    ctx.writer.flush()
    assert failures[0].startswith(f"{REFINER}.safetensors: an SDXL refiner renders only as the refiner of an SDXL")
    assert failures[1] == "composable prompts (AND, or a weighted prompt 'a:1.5') are not supported with a refiner"


# ---- routing and VRAM --------------------------------------------------------------------------------

def test_routes_and_vram_account_for_the_refiner():
    from farm.messages import route_of
    from farm.vram import Footprint, Memory, Weights, need_gb
    from worker.queue_order import Capabilities, queue_order

    plain = make_task(checkpoint=XL)
    refined = plain.model_copy(update={"refiner": REFINER})
    never = refined.model_copy(update={"refiner_switch_at": 1.0})
    assert route_of(plain).parts == () and route_of(never) == route_of(plain)  # queue names as before
    assert route_of(refined).parts == (("refiner", REFINER),) and route_of(refined).queue != route_of(plain).queue
    alone, both = Footprint("SDXL", Weights(0, "?")), Footprint("SDXL", Weights(0, "?"), refiner="SDXL refiner")
    assert need_gb(both, 1024 * 1024) == need_gb(alone, 1024 * 1024) + 7.0
    card = Memory(12.0)
    assert card.why_not(alone, 1024 * 1024, XL) is None and "needs ~16.0 GB" in card.why_not(both, 1024 * 1024, XL)
    caps = Capabilities({XL: None}, footprints={(XL, route_of(refined).parts): f"no refiner checkpoint '{REFINER}' here"})
    assert caps.why_not(route_of(refined)) == f"no refiner checkpoint '{REFINER}' here"
    # a worker holding the base with its refiner reads the refiner's queue first, one without it the other
    routes = {route_of(t).queue: route_of(t) for t in (plain, refined)}
    pending = {q: 5 for q in routes}
    with_refiner = queue_order(routes, pending, XL, {}, loaded_refiner=REFINER)
    assert with_refiner[0] == route_of(refined).queue
    assert queue_order(routes, pending, XL, {})[0] == route_of(plain).queue


# ---- end to end ---------------------------------------------------------------------------------------

def test_farm_run_of_the_example_job_and_its_as_spec_round_trip(models, tmp_path):
    result = farm("run", str(REPO / "jobs" / "refiner.yaml"), "--out", str(tmp_path / "one"), "--models", str(models))
    assert result.returncode == 0, result.stderr
    images = {}
    for path in (tmp_path / "one").rglob("images/*.png"):
        _, _, params = parse_infotext(read_parameters(path))
        images[params.get("Refiner switch at")] = path
        if "Refiner" in params:
            assert params["Refiner"] == f"{REFINER} [{sha256_file(_refiner_file(models))[:10]}]"
    assert set(images) == {None, 0.5, 0.8}  # the two without a refiner write no Refiner keys
    info = farm("info", str(images[0.5]), "--as-spec", "--models", str(models))
    assert info.returncode == 0, info.stderr
    assert f"refiner: {REFINER}" in info.stdout and "refiner_switch_at: 0.5" in info.stdout
    again = tmp_path / "again.yaml"
    again.write_text(info.stdout)
    result = farm("run", str(again), "--out", str(tmp_path / "two"), "--models", str(models))
    assert result.returncode == 0, result.stderr
    (second,) = (tmp_path / "two").rglob("images/*.png")
    assert np.array_equal(np.asarray(Image.open(second)), np.asarray(Image.open(images[0.5])))
    assert read_parameters(second) == read_parameters(images[0.5])


def test_a_worker_renders_a_refiner_sweep_through_redis(models, redis_server, start_worker, tmp_path):
    from farm.ledger import Ledger
    from test_e2e_farm import wait_for

    worker = start_worker(redis_server.url, models, "xlbox")
    worker.wait_ready()
    spec = tmp_path / "remote.yaml"
    spec.write_text(BASE.replace("seed: 7", "seed: 1-2") + f"refiner: [None, {REFINER}]\n")
    store = tmp_path / "renders"
    result = farm("submit", str(spec), "--broker", redis_server.url, "--store", str(store), "--models", str(models))
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    wait_for(lambda: Ledger(redis_server.client()).job_info(job).get("status") == "complete", 180, f"job {job}")
    records = [json.loads(line) for line in (store / job / "manifest.jsonl").read_text().splitlines()]
    refiners = sorted(parse_infotext(r["parameters"])[2].get("Refiner", "") for r in records)
    assert len(records) == 4 and refiners[:2] == ["", ""] and refiners[2].startswith(f"{REFINER} [")
