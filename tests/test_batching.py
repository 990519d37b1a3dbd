"""Batching across tasks: which tasks share a diffusion call, the coordinator's groups, and the
worker rendering a group's images in batches that equal the images rendered alone."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/transformers are imported: never reach the hub

import json
import threading

import numpy as np
import pytest

from farm.batching import batch_key, group_size, group_tasks
from farm.store import MemoryStore, open_store
from farm.task import RenderTask
from farm.tunables import MAX_GROUP
from model_tree import run_task
from worker.render import Slot, plan_calls, render_batch, render_images
from worker.context import WorkerContext
from worker.render_loop import render_tasks
from worker.writer import Batch, ImageWriter
from factories import make_task


def _task(index: int = 0, **overrides) -> RenderTask:
    return make_task(**{"job": "batch", "index": index, "seed": 100 + index, "sampler": "Euler a", **overrides})


def _max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


# --- the coordinator side (no torch) -------------------------------------------------------------

def test_tasks_differing_in_seed_prompt_or_variation_share_a_batch_key():
    base = batch_key(_task())
    assert batch_key(_task(1, seed=5, prompt="a blue robot", negative_prompt="ugly")) == base
    assert batch_key(_task(2, subseed=9, subseed_strength=0.3, filename="[seed]")) == base
    for change in ({"cfg": 5.0}, {"steps": 3}, {"width": 128}, {"sampler": "Euler"}, {"checkpoint": "other"},
                   {"vae": "v"}, {"clip_skip": 2}, {"batch_size": 2}, {"job": "other"}, {"rng": "nv"},
                   {"eta": 0.5}, {"ensd": 31337}, {"kind": "img2img"}):
        assert batch_key(_task(**change)) != base, change
    # LoRAs change the model for the whole batch: their tags (and weights) are in the key
    lora = batch_key(_task(prompt="a robot <lora:style:0.8>"))
    assert lora != base
    assert batch_key(_task(prompt="a cat, <lora:style:0.8>")) == lora
    assert batch_key(_task(prompt="a cat, <lora:style:0.5>")) != lora


def test_groups_are_runs_of_equal_keys_at_most_size_long_and_stream():
    tasks = [_task(i, cfg=7.0 if i < 10 else 5.0) for i in range(13)]
    groups = list(group_tasks(iter(tasks), 4))
    assert [len(g) for g in groups] == [4, 4, 2, 3]  # the cfg change at task 10 starts a new group
    assert [t for g in groups for t in g] == tasks
    assert all(len({batch_key(t) for t in g}) == 1 for g in groups)
    assert [len(g) for g in group_tasks(tasks, 1)] == [1] * 13

    def endless():
        i = 0
        while True:
            yield _task(i)
            i += 1

    first = next(group_tasks(endless(), 3))  # a million-task job is never materialised
    assert [t.index for t in first] == [0, 1, 2]


def test_group_size_keeps_every_live_worker_busy():
    assert group_size(24, 1) == 6
    assert group_size(24, 2) == 3
    assert group_size(24, 8) == 1
    assert group_size(10_000, 3) == MAX_GROUP
    assert group_size(0, 0) == 1
    assert group_size(24, 0) == 1  # queued before any worker started: do not bet on one worker
    assert group_size(256, 0) == MAX_GROUP


# --- the worker side: one diffusion call for many tasks ------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from worker.tiny import make_tiny

    root = tmp_path_factory.mktemp("models")
    make_tiny(root)
    return root


@pytest.fixture(scope="module")
def pipe(models):
    from worker.pipelines import load_pipeline

    return load_pipeline(models / "Stable-diffusion" / "seedfarm-tiny.safetensors")


def test_images_of_different_tasks_in_one_batch_equal_each_rendered_alone(pipe):
    tasks = [
        _task(0, seed=11),
        _task(1, seed=12, prompt="a green field at dawn", negative_prompt="dark"),
        _task(2, seed=13, subseed=7, subseed_strength=0.5),
        _task(3, seed=14, prompt="a [cat:dog:1] on a sofa"),  # prompt editing switches mid-batch
        _task(4, seed=20, batch_size=2, prompt="two red robots"),
    ]
    slots = [Slot(t, i) for t in tasks for i in range(t.batch_size)]
    batched = render_batch(pipe, slots)
    assert len(batched) == 6
    alone = [image for t in tasks for image in render_images(pipe, t)]
    diffs = [_max_diff(a, b) for a, b in zip(batched, alone)]
    assert max(diffs) <= 1, diffs  # A1111 batch invariance: within 1/255
    assert _max_diff(batched[0], batched[1]) > 10  # and they are different images


def test_composable_and_longer_prompts_get_their_own_pipeline_calls(pipe):
    from worker.conditioning import conditioning_schedule

    def schedule(prompt):
        return conditioning_schedule(pipe, prompt, "blurry", 2)

    plain, other = schedule("a red robot"), schedule("a blue robot")
    composable = schedule("a cat AND a dog")
    long = schedule(", ".join(["a very long prompt about robots"] * 20))  # two 75-token chunks
    schedules = [plain, other, composable, composable, long, plain]
    calls = plan_calls(schedules)
    assert sorted(map(sorted, calls)) == [[0, 1, 5], [2, 3], [4]]
    # and a composable prompt batched with itself still renders as alone
    task = _task(prompt="a cat AND a dog", seed=3)
    batch = render_batch(pipe, [Slot(task, 0), Slot(_task(1, prompt="a cat AND a dog", seed=4), 0),
                                Slot(_task(2, seed=5), 0)])
    assert _max_diff(batch[0], render_images(pipe, task)[0]) <= 1


def test_the_worker_renders_a_group_in_batches_of_its_max_batch(models, tmp_path):
    store = open_store(str(tmp_path / "out"))
    tasks = [_task(i, prompt=f"robot number {i}") for i in range(5)]
    finished = []
    ctx = WorkerContext(models_dir=models, max_batch=2)
    counts, left = render_tasks(tasks, store, ctx, lambda t, summary, failure: finished.append((t.id, failure)))
    ctx.writer.flush()
    assert counts == {"tasks": 5, "skipped": 0, "images": 5} and left == []
    assert sorted(finished) == sorted((t.id, None) for t in tasks)
    records = [json.loads(store.read_bytes(k)) for k in store.list_keys("batch/records/")]
    assert sorted(r["render_batch"] for r in records) == [1, 2, 2, 2, 2]
    # a task of a group already stored is skipped, and reported as such
    again = []
    counts, _ = render_tasks(tasks, store, ctx, lambda t, summary, failure: again.append(summary.get("skipped")))
    assert counts["skipped"] == 5 and again == [True] * 5


def test_a_stop_between_batches_leaves_the_rest_of_the_group_unrendered(models, tmp_path):
    store = open_store(str(tmp_path / "out"))
    tasks = [_task(i, seed=i) for i in range(5)]
    calls = []
    ctx = WorkerContext(models_dir=models, max_batch=2)
    # Ctrl+C during the second call: it finishes, the rest goes back to the queue (worker/tasks.py)
    counts, left = render_tasks(tasks, store, ctx, lambda t, s, f: None, stop=lambda: calls.append(1) or len(calls) >= 2)
    ctx.writer.flush()
    assert counts["images"] == 4 and left == tasks[4:]
    assert len(list(store.list_keys("batch/records/"))) == 4


def test_a_task_that_cannot_render_fails_alone_and_the_group_goes_on(models, tmp_path):
    store = open_store(str(tmp_path / "out"))
    tasks = [_task(0), _task(1, prompt="x <lora:missing:1>"), _task(2, seed=5)]
    results = {}
    ctx = WorkerContext(models_dir=models)
    render_tasks(tasks, store, ctx, lambda t, summary, failure: results.setdefault(t.index, failure))
    ctx.writer.flush()
    assert results[0] is None and results[2] is None
    assert "missing" in results[1] and "\n" not in results[1]


# --- storing while the next batch renders --------------------------------------------------------

class _GatedStore(MemoryStore):
    """A store whose writes wait until the test opens its gate (an upload over a slow link, as
    slow as the test wants)."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.writes = 0

    def write_bytes(self, key, data):
        assert self.gate.wait(120), "the test never opened the gate"
        super().write_bytes(key, data)
        self.writes += 1


def test_images_are_stored_while_the_next_batch_renders(models):
    store = _GatedStore()
    ctx = WorkerContext(models_dir=models, max_batch=1)
    store.gate.set()
    run_task(_task(99), store, ctx)  # load the model first
    store.gate.clear()
    writes_before = store.writes
    reported = []
    render_tasks([_task(i) for i in range(3)], store, ctx, lambda t, s, f: reported.append(t.index))
    # three batches rendered while no write could finish: the renders never waited for the store
    # (the writer holds one batch and at most two more queue up behind it)
    assert store.writes == writes_before and reported == []
    store.gate.set()
    ctx.writer.flush()
    assert sorted(reported) == [0, 1, 2]  # each task reported once its images are stored
    assert store.writes == writes_before + 3 * 2  # a PNG and a record per image


def test_a_write_that_keeps_failing_fails_the_task_and_a_flaky_one_is_retried():
    writer = ImageWriter(retry_delays=(0.0, 0.0))
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError("connection reset")

    def broken():
        raise OSError("bucket gone")

    outcomes = []
    writer.submit(Batch([flaky], outcomes.append))
    writer.submit(Batch([broken], outcomes.append))
    writer.close()
    assert len(attempts) == 3
    assert outcomes[0] is None
    assert outcomes[1] == "storing the image failed: OSError: bucket gone"



def test_out_of_gpu_memory_halves_the_batch_and_remembers_it(models, tmp_path, monkeypatch):
    import torch

    import worker.render

    real = worker.render.render_batch
    calls = []

    def small_card(pipe, slots):  # a card where only 2 of these images fit at once
        calls.append(len(slots))
        if len(slots) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(pipe, slots)

    monkeypatch.setattr(worker.render, "render_batch", small_card)
    store = open_store(str(tmp_path / "out"))
    ctx = WorkerContext(models_dir=models, max_batch=8)
    tasks = [_task(i, seed=i) for i in range(5)]
    counts, _ = render_tasks(tasks, store, ctx, lambda t, s, f: None)
    ctx.writer.flush()
    assert counts["images"] == 5 and calls == [5, 4, 2, 2, 1]
    records = [json.loads(store.read_bytes(k)) for k in store.list_keys("batch/records/")]
    assert sorted(r["render_batch"] for r in records) == [1, 2, 2, 2, 2]
    more = [_task(i, seed=i) for i in range(5, 8)]
    calls.clear()
    render_tasks(more, store, ctx, lambda t, s, f: None)  # the next group starts at what fitted
    assert calls == [2, 1]
