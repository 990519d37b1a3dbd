"""Streaming, deterministic expansion of a JobSpec into RenderTasks (farm/expand.py)."""

from __future__ import annotations

import hashlib
import itertools
import tracemalloc
from pathlib import Path

import pytest

from farm.expand import expand, task_at
from farm.spec import load_spec, parse_spec
from farm.task import RenderTask

ROOT = Path(__file__).resolve().parents[1]


def spec(text: str, **kw):
    return parse_spec(text, "jobs/t.yaml", **kw)


def test_demo_expands_in_default_order():
    s = load_spec(ROOT / "jobs" / "demo.yaml")
    tasks = list(expand(s))
    assert [t.index for t in tasks] == list(range(8))
    # sampler outermost, then cfg, seed innermost
    assert [(t.axes["sampler"], t.cfg, t.seed) for t in tasks] == [
        (sampler, cfg, seed)
        for sampler in ("Euler a", "DPM++ 2M Karras")
        for cfg in (5.0, 7.0)
        for seed in (1000, 1001)
    ]
    first = tasks[0]
    assert first.job == s.job_id and first.checkpoint == "seedfarm-tiny" and first.checkpoint_hash is None
    assert (first.width, first.height, first.steps, first.clip_skip) == (64, 64, 2, 1)
    assert first.negative_prompt == "blurry, low quality" and first.batch_size == 1
    assert (tasks[-1].sampler, tasks[-1].schedule) == ("DPM++ 2M", "Karras")
    assert tasks[-1].axes == {"sampler": "DPM++ 2M Karras", "cfg": 7.0, "seed": 1001}
    assert len({t.id for t in tasks}) == 8
    assert all(t.id == t.content_id() and len(t.id) == 16 for t in tasks)


def test_task_ids_depend_on_content_only():
    a = spec("prompt: a\ncheckpoint: m\nseed: 1-3\ncfg: [5, 7]\n")
    b = spec("prompt: a\ncheckpoint: m\nseed: 1-3\ncfg: [5, 7]\ncombine: seed * cfg\nname: other\n")
    ids_a = {(t.seed, t.cfg): t.id for t in expand(a)}
    ids_b = {(t.seed, t.cfg): t.id for t in expand(b)}
    assert ids_a == ids_b  # other job, other order: same renders, same ids
    assert [t.index for t in expand(b)] == list(range(6))
    assert [(t.seed, t.cfg) for t in expand(b)][:2] == [(1, 5.0), (1, 7.0)]
    # the same spec parsed twice gives the same stream
    assert [t.to_json() for t in expand(a)] == [t.to_json() for t in expand(spec(a.source_text))]


def test_task_at_matches_the_stream_and_start_resumes():
    s = load_spec(ROOT / "jobs" / "robots.yaml")
    tasks = list(expand(s))
    assert [task_at(s, i) for i in range(len(tasks))] == tasks
    assert list(expand(s, start=5)) == tasks[5:]
    assert list(expand(s, start=len(tasks))) == []
    with pytest.raises(IndexError, match="out of range"):
        task_at(s, len(tasks))
    with pytest.raises(IndexError):
        task_at(s, -1)
    with pytest.raises(ValueError):
        next(expand(s, start=-1))


def test_mixed_radix_order_is_the_nested_loop_order():
    s = spec("prompt: [a, b]\ncheckpoint: [m1, m2, m3]\nseed: 7-8\nsteps: [2, 4]\n")
    got = [(t.checkpoint, t.steps, t.prompt, t.seed) for t in expand(s)]
    assert got == list(itertools.product(["m1", "m2", "m3"], [2, 4], ["a", "b"], [7, 8]))


def test_zipped_axes_vary_together():
    s = load_spec(ROOT / "jobs" / "zip.yaml")
    tasks = list(expand(s))
    pairs = [(t.prompt, t.seed, t.cfg) for t in tasks]
    prompts = list(s.values["prompt"])
    assert pairs == [(p, seed, cfg) for p, seed in zip(prompts, [101, 202, 303]) for cfg in (5.0, 8.0)]
    assert tasks[0].axes == {"prompt": prompts[0], "seed": 101, "cfg": 5.0}


def test_prompt_sr_replaces_in_prompt_and_negative():
    s = spec("prompt: a robot, robot arms\nnegative_prompt: ugly robot\nprompt_sr: [robot, cat]\ncheckpoint: m\nseed: 1\n")
    plain, replaced = list(expand(s))
    assert (plain.prompt, plain.negative_prompt) == ("a robot, robot arms", "ugly robot")
    assert (replaced.prompt, replaced.negative_prompt) == ("a cat, cat arms", "ugly cat")
    assert replaced.axes == {"prompt_sr": "cat"}


def test_robots_matrix_and_sr_labels():
    s = load_spec(ROOT / "jobs" / "robots.yaml")
    tasks = list(expand(s))
    assert [t.axes["prompt"] for t in tasks[:2]] == ["a robot", "a robot"]
    assert [t.prompt for t in tasks[:2]] == ["a robot", "a cat"]
    assert tasks[-1].prompt == "a cat, red paint, in the rain"
    assert tasks[-1].axes == {"prompt": "a robot, red paint, in the rain", "prompt_sr": "cat"}


def test_axes_labels_are_values_of_spec_axes():
    s = spec(
        "prompt: [a, b]\ncheckpoint: m\nseed: 1\nsampler: [Euler, DPM++ 2M Karras]\nsize: [64x64, 64x128]\n"
        "cfg: 5-6 (+0.5)\nsteps: 2\n"
    )
    axes = s.axes()
    for t in expand(s):
        assert set(t.axes) == set(s.swept_axes())
        assert all(value in axes[name] for name, value in t.axes.items())
        assert t.axes["size"] == f"{t.width}x{t.height}"
    last = task_at(s, s.task_count() - 1)
    assert last.axes == {"size": "64x128", "sampler": "DPM++ 2M Karras", "cfg": 6.0, "prompt": "b"}
    assert (last.width, last.height, last.sampler, last.schedule) == (64, 128, "DPM++ 2M", "Karras")


def test_schedule_axis_and_width_height_axes():
    s = spec("prompt: a\ncheckpoint: m\nseed: 1\nsampler: Euler\nschedule: [Automatic, Karras]\nwidth: [64, 128]\nheight: 64\n")
    got = [(t.width, t.height, t.schedule, t.axes) for t in expand(s)]
    assert got == [
        (64, 64, "Automatic", {"width": 64, "schedule": "Automatic"}),
        (64, 64, "Karras", {"width": 64, "schedule": "Karras"}),
        (128, 64, "Automatic", {"width": 128, "schedule": "Automatic"}),
        (128, 64, "Karras", {"width": 128, "schedule": "Karras"}),
    ]


def test_batch_size_and_filename_travel_with_the_task():
    s = spec("prompt: a\ncheckpoint: m\nseed: 100\nbatch_size: 3\noutput: {filename: '[seed]-[cfg]'}\n")
    (t,) = expand(s)
    assert t.batch_size == 3 and t.seeds == [100, 101, 102]
    assert t.filename == "[seed]-[cfg]" and t.image_stem(101) == f"101-7-{t.id}"


def test_checkpoint_hash_with_a_models_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FARM_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "models" / "checkpoints"  # ComfyUI layout
    folder.mkdir(parents=True)
    (folder / "seedfarm-tiny.safetensors").write_bytes(b"abc")
    text = "prompt: a\ncheckpoint: seedfarm-tiny\nseed: 1-2\n"
    with_hash = list(expand(spec(text, models_dir=tmp_path / "models")))
    without = list(expand(spec(text)))
    assert {t.checkpoint_hash for t in with_hash} == {hashlib.sha256(b"abc").hexdigest()}
    assert with_hash[0].id != without[0].id  # the hash is part of what is rendered


def test_recorded_checkpoint_hashes_give_the_same_ids_without_the_models(tmp_path, monkeypatch):
    monkeypatch.setenv("FARM_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    (folder / "seedfarm-tiny.safetensors").write_bytes(b"abc")
    text = "prompt: a\ncheckpoint: seedfarm-tiny\nseed: 1-2\n"
    submitted = spec(text, models_dir=tmp_path / "models")
    recorded = submitted.checkpoint_hashes()
    assert recorded == {"seedfarm-tiny": hashlib.sha256(b"abc").hexdigest()}
    resumed = spec(text, checkpoint_hashes=recorded)  # e.g. `farm resume` on another box
    assert [t.id for t in expand(resumed)] == [t.id for t in expand(submitted)]
    assert spec(text).checkpoint_hashes() == {}


def test_tasks_round_trip_as_json():
    for t in expand(load_spec(ROOT / "jobs" / "zip.yaml")):
        assert RenderTask.from_json(t.to_json()) == t


def test_a_million_tasks_stream_without_a_list():
    tracemalloc.start()
    try:
        s = spec("prompt: [a, b]\ncheckpoint: m\nseed: 0-249999\ncfg: [5, 7]\n")
        first = list(itertools.islice(expand(s), 10))
        last = task_at(s, s.task_count() - 1)
        count = s.task_count()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 1_000_000
    assert isinstance(s.values["seed"], range)
    assert [t.seed for t in first] == list(range(10)) and {t.cfg for t in first} == {5.0}
    assert (last.cfg, last.prompt, last.seed, last.index) == (7.0, "b", 249_999, 999_999)
    # a materialised million would take tens of MB; streaming stays well under one
    assert peak < 1_000_000, peak


def test_a_checkpoints_family_is_read_once_per_job_not_once_per_task(tmp_path, monkeypatch):
    """Expansion asks every task's family (defaults, routing); reading the file's header each time
    made a 50,000-task job with a models folder take minutes."""
    import farm.spec.jobspec as jobspec

    monkeypatch.setenv("FARM_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    (folder / "seedfarm-tiny.safetensors").write_bytes(b"abc")
    job = spec("prompt: a\ncheckpoint: seedfarm-tiny\nseed: 1-200\n", models_dir=tmp_path / "models")
    reads = []
    real = jobspec.checkpoint_family
    monkeypatch.setattr(jobspec, "checkpoint_family", lambda *a: reads.append(a[0]) or real(*a))
    assert len(list(expand(job))) == 200
    assert reads == ["seedfarm-tiny"]
