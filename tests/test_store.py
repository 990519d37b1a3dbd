"""The store backends (the folder's atomic writes and concurrent writers; the in-memory store's
contract) and a job's layout in a store."""

from __future__ import annotations

import json
import multiprocessing
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from farm.store import (
    TEMP_PREFIX,
    LocalStore,
    MemoryStore,
    image_key,
    image_record,
    is_done,
    load_records,
    manifest_key,
    open_store,
    record_key,
    save_image,
    write_manifest,
)
from farm.store import layout
from farm.task import RenderTask
import factories

# fork starts a process in milliseconds; elsewhere spawn (the workers are top-level functions).
MP = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


def make_task(index: int = 0, **changes) -> RenderTask:
    fields = dict(
        job="job1", index=index, prompt=f"a cat {index}", negative_prompt="", seed=100, checkpoint="tiny",
        checkpoint_hash="ab" * 32, sampler="Euler a", axes={"prompt": f"a cat {index}"},
    )
    return factories.make_task(**(fields | changes))


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


# ---- the store ------------------------------------------------------------------------------


def test_open_store_paths_and_urls(tmp_path):
    assert isinstance(open_store(tmp_path), LocalStore)
    assert open_store(str(tmp_path)).root == tmp_path
    spaced = tmp_path / "my outputs"
    store = open_store(spaced.as_uri())
    assert store.root == spaced and "%20" in store.url
    assert open_store(store.url).root == spaced
    with pytest.raises(ValueError, match="unknown option.*colour"):
        open_store("s3://bucket/prefix?colour=red")
    with pytest.raises(ValueError, match="unsupported store URL scheme 'http://'"):
        open_store("http://example.com/x")


@pytest.fixture(params=["folder", "memory"])
def any_store(request, tmp_path):
    """Each backend that needs no server; S3's run of the same contract is tests/test_store_s3.py."""
    return LocalStore(tmp_path) if request.param == "folder" else MemoryStore()


def test_write_read_exists_list_delete(any_store):
    store = any_store
    store.write_bytes("j/images/a.png", b"A")
    store.write_bytes("j/images/b.png", b"B")
    store.write_bytes("j/imagesX/c.png", b"C")
    store.write_text("j/job.json", "{}")
    assert store.read_bytes("j/images/a.png") == b"A" and store.read_text("j/job.json") == "{}"
    assert store.exists("j/images/b.png") and not store.exists("j/images/zz.png")
    assert list(store.list_keys("j/images/")) == ["j/images/a.png", "j/images/b.png"]
    # a plain string prefix, as S3 lists it
    assert list(store.list_keys("j/images")) == ["j/images/a.png", "j/images/b.png", "j/imagesX/c.png"]
    assert list(store.list_keys()) == ["j/images/a.png", "j/images/b.png", "j/imagesX/c.png", "j/job.json"]
    assert list(store.list_keys("nothing/here/")) == []
    store.write_bytes("j/images/b.png", b"B2")
    assert store.read_bytes("j/images/b.png") == b"B2", "a write replaces the object whole"
    store.delete("j/images/a.png")
    store.delete("j/images/a.png")  # already gone: no error, as on S3
    assert not store.exists("j/images/a.png")
    with pytest.raises(FileNotFoundError):
        store.read_bytes("j/images/a.png")


def test_describe_says_where_an_object_lives(tmp_path):
    assert LocalStore(tmp_path).describe("j/images/a.png") == str(tmp_path / "j" / "images" / "a.png")
    store = MemoryStore("described")
    assert store.describe() == store.url == "memory://described"
    assert store.describe("j/x.png") == "memory://described/j/x.png"


def test_a_memory_store_is_reopened_by_its_url_while_someone_holds_it():
    store = MemoryStore()
    store.write_bytes("j/a.png", b"A")
    assert open_store(store.url) is store
    again = open_store("memory://tests-fresh")
    assert isinstance(again, MemoryStore) and list(again.list_keys()) == []
    with pytest.raises(ValueError, match="exists already"):
        MemoryStore("tests-fresh")
    del again
    assert list(open_store("memory://tests-fresh").list_keys()) == [], "gone once nobody holds it"
    data = bytearray(b"before")
    store.write_bytes("j/b.bin", data)
    data[:] = b"after!"
    assert store.read_bytes("j/b.bin") == b"before", "the store keeps its own copy"


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../x", "a/./b", "a\\b", f"a/{TEMP_PREFIX}x"])
def test_bad_keys_are_refused(any_store, key):
    with pytest.raises(ValueError, match="bad store key"):
        any_store.write_bytes(key, b"x")
    with pytest.raises(ValueError, match="bad store key"):
        any_store.read_bytes(key)


def test_overwrite_replaces_and_leaves_no_temp_files(tmp_path):
    store = LocalStore(tmp_path)
    for i in range(5):
        store.write_bytes("k/v.bin", bytes([i]) * 1000)
    assert store.read_bytes("k/v.bin") == bytes([4]) * 1000
    assert temp_files(tmp_path) == []
    assert os.listdir(tmp_path / "k") == ["v.bin"]


def test_failed_write_keeps_the_old_object_and_cleans_its_temp_file(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    store.write_bytes("k/v.bin", b"old")

    def broken_replace(src, dst):
        assert Path(src).name.startswith(TEMP_PREFIX) and Path(src).read_bytes() == b"new"
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        store.write_bytes("k/v.bin", b"new")
    assert store.read_bytes("k/v.bin") == b"old"
    assert temp_files(tmp_path) == []


SIZE = 256 * 1024


def _overwrite(root: str, fill: int, rounds: int) -> None:
    store = LocalStore(root)
    for _ in range(rounds):
        store.write_bytes("shared/blob.bin", bytes([fill]) * SIZE)


def _watch(root: str, stop, result) -> None:
    """Read the object over and over while writers replace it; count reads that were not whole."""
    store, reads, torn = LocalStore(root), 0, 0
    while not stop.is_set() or reads == 0:
        try:
            data = store.read_bytes("shared/blob.bin")
        except FileNotFoundError:
            continue
        reads += 1
        if len(data) != SIZE or len(set(data)) != 1:
            torn += 1
    result.put((reads, torn))


def test_concurrent_writers_never_show_a_partial_object(tmp_path):
    stop, result = MP.Event(), MP.Queue()
    watcher = MP.Process(target=_watch, args=(str(tmp_path), stop, result))
    watcher.start()
    writers = [MP.Process(target=_overwrite, args=(str(tmp_path), fill, 25)) for fill in (1, 2, 3)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(30)
        assert w.exitcode == 0
    stop.set()
    reads, torn = result.get(timeout=30)
    watcher.join(30)
    assert reads > 0 and torn == 0
    assert set(LocalStore(tmp_path).read_bytes("shared/blob.bin")) <= {1, 2, 3}
    assert temp_files(tmp_path) == []


# ---- the job layout -------------------------------------------------------------------------


def test_keys_of_the_job_layout():
    """The keys stores written by earlier versions hold: `farm resume` and the review page read them."""
    assert layout.job_spec_key("j") == "j/job.yaml" and layout.job_record_key("j") == "j/job.json"
    assert image_key("j", "s") == "j/images/s.png"
    assert record_key("j", "s") == "j/records/s.json" and layout.records_prefix("j") == "j/records/"
    assert manifest_key("j") == "j/manifest.jsonl"
    assert layout.sheet_key("j", "sheet-cfg=7") == "j/sheets/sheet-cfg=7.png"
    assert layout.mark_key("j", "1-7.5-ab") == "j/review/marks/1-7.5-ab.json"
    assert layout.mark_stem("j", "j/review/marks/1-7.5-ab.json") == "1-7.5-ab"
    assert layout.review_file_key("j", "index.html") == "j/review/index.html"
    assert layout.image_path("1-7.5-ab") == "images/1-7.5-ab.png"
    assert layout.image_stem("images/1-7.5-ab.png") == "1-7.5-ab"
    assert layout.job_file_key("j", "images/1-7.5-ab.png") == image_key("j", "1-7.5-ab")
    assert layout.input_key("j", "init.png") == "j/inputs/init.png" and layout.model_key("x") == "models/x"
    assert layout.job_of("j/records/s.json") == ("j", "records/s.json")
    assert layout.is_record_path("records/s.json") and not layout.is_record_path("images/s.png")
    assert layout.is_job_record_path("job.json") and not layout.is_job_record_path("job.yaml")


def test_image_record_fields():
    task = make_task(index=3)
    before = datetime.now(timezone.utc)
    record = image_record(task, 100, "a cat 3\nSteps: 2", 1.25, "pc1:gpu0")
    assert record["task_id"] == task.id and record["job"] == "job1"
    assert record["index"] == 3 and record["seed"] == 100
    assert record["image"] == f"images/{task.image_stem(100)}.png"
    assert record["parameters"] == "a cat 3\nSteps: 2"
    assert RenderTask.from_json(record["task"]) == task
    assert record["axes"] == {"prompt": "a cat 3"}  # one image, seed not swept: no seed axis
    assert record["model_hash"] == "abababab" + "ab"
    assert record["render_seconds"] == 1.25 and record["worker"] == "pc1:gpu0"
    finished = datetime.fromisoformat(record["finished_at"])
    assert finished.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= finished <= datetime.now(timezone.utc)
    json.dumps(record)  # plain JSON all the way down


def test_image_record_adds_the_seed_axis_for_batches_and_seed_sweeps():
    batch = make_task(batch_size=3)
    assert image_record(batch, 102, "", 1.0, "w")["axes"] == {"prompt": "a cat 0", "seed": 102}
    swept = make_task(axes={"seed": 100, "cfg": 7.0})
    assert image_record(swept, 100, "", 1.0, "w")["axes"] == {"seed": 100, "cfg": 7.0}
    assert image_record(make_task(checkpoint_hash=None), 100, "", 1.0, "w")["model_hash"] is None


class RecordingStore(MemoryStore):
    def __init__(self):
        super().__init__()
        self.order: list[str] = []

    def write_bytes(self, key, data):
        super().write_bytes(key, data)
        self.order.append(key)


def test_save_image_writes_the_png_before_its_record_and_is_done_counts_every_seed():
    store = RecordingStore()
    task = make_task(batch_size=2)
    assert not is_done(store, task)
    save_image(store, task, 100, b"png100", image_record(task, 100, "t", 1.0, "w"))
    stem = task.image_stem(100)
    assert store.order == [image_key("job1", stem), record_key("job1", stem)]
    assert store.read_bytes(image_key("job1", stem)) == b"png100"
    assert not is_done(store, task), "seed 101 is still missing"
    save_image(store, task, 101, b"png101", image_record(task, 101, "t", 1.0, "w"))
    assert is_done(store, task)
    assert not is_done(store, make_task(index=1))


def test_load_records_in_expansion_order_once_per_image():
    store = MemoryStore()
    tasks = [make_task(index=i, batch_size=2) for i in (2, 0, 1)]
    for task in tasks:
        for seed in reversed(task.seeds):
            save_image(store, task, seed, b"png", image_record(task, seed, "t", 1.0, "w"))
    save_image(store, tasks[0], 100, b"png", image_record(tasks[0], 100, "t", 2.0, "again"))
    records = load_records(store, "job1")
    assert [(r["index"], r["seed"]) for r in records] == [(0, 100), (0, 101), (1, 100), (1, 101), (2, 100), (2, 101)]
    assert load_records(store, "other-job") == []


def test_corrupt_record_is_a_clear_error():
    store = MemoryStore()
    store.write_bytes("job1/records/x.json", b"{not json")
    with pytest.raises(ValueError, match=r"records.x\.json: not a valid image record"):
        load_records(store, "job1")


def _render_tasks(root: str, indexes: list[int], worker: str) -> None:
    store = LocalStore(root)
    for i in indexes:
        task = make_task(index=i, batch_size=2)
        for seed in task.seeds:
            png = f"{task.id}-{seed}".encode() * 1000
            save_image(store, task, seed, png, image_record(task, seed, "t", 0.5, worker))
        write_manifest(store, "job1")  # manifests built while others still write must not break


def test_concurrent_workers_then_manifest_lists_each_image_exactly_once(tmp_path):
    # Four workers; tasks 0-5 are delivered to two workers each, 6-9 to one.
    plans = [[0, 1, 2, 6], [0, 3, 4, 7], [1, 2, 5, 8], [3, 4, 5, 9]]
    workers = [MP.Process(target=_render_tasks, args=(str(tmp_path), plan, f"w{n}")) for n, plan in enumerate(plans)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    store = LocalStore(tmp_path)
    assert write_manifest(store, "job1") == 20
    lines = store.read_text("job1/manifest.jsonl").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 20
    assert len({(r["task_id"], r["seed"]) for r in records}) == 20
    assert [(r["index"], r["seed"]) for r in records] == [(i, s) for i in range(10) for s in (100, 101)]
    for r in records:
        png = store.read_bytes(f"job1/{r['image']}")
        assert png == f"{r['task_id']}-{r['seed']}".encode() * 1000
    assert temp_files(tmp_path) == []
    assert all(is_done(store, make_task(index=i, batch_size=2)) for i in range(10))


def test_a_job_read_back_from_its_store_parses_to_the_same_job():
    from farm.jobs import read_job, read_job_record, write_job_record
    from farm.spec import parse_spec

    store = MemoryStore()
    text = "prompt: a cat\ncheckpoint: tiny\nseed: 1-3\nsize: 64x64\ngrid: {x: seed}\n"
    spec = parse_spec(text, "my sweep.yaml")  # no `name:`: the job is named after the file
    write_job_record(store, spec)
    assert sorted(store.list_keys()) == [layout.job_record_key(spec.job_id), layout.job_spec_key(spec.job_id)]
    stored = read_job(store, spec.job_id)
    assert stored.record == read_job_record(store, spec.job_id) and stored.spec_text == text
    assert stored.name == "my-sweep" and stored.grid == ("seed", None)
    again = stored.spec()
    assert again.job_id == spec.job_id and again.task_count() == 3
    with pytest.raises(FileNotFoundError):
        read_job(store, "no-such-job")
