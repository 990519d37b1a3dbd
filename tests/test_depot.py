"""The model depot (farm/depot.py) on a folder store and on moto's S3 server, and a worker's model
cache (worker/model_cache.py): fetch, verification, one download per PC, eviction, failures."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import boto3
import pytest

from conftest import farm
from farm.depot import Depot, DepotRecord, model_to_push
from farm.hashes import sha256_file
from farm.models import ModelFile, Registry
from farm.store import LocalStore, layout, open_store
from worker.context import TaskError
from worker.model_cache import DepotUnreachable, ModelCache, parse_size
from worker.queue_order import Capabilities, queue_order
from farm.messages import Route


def model_file(folder: Path, name: str, size: int, kind: str = "checkpoint", seed: int = 0) -> ModelFile:
    """A file standing in for a model: the depot and the cache move bytes, whatever they hold."""
    sub = {"checkpoint": "Stable-diffusion", "lora": "Lora", "vae": "VAE"}[kind]
    path = folder / sub / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    block = bytes((seed + i) % 251 for i in range(4096))
    path.write_bytes((block * (size // 4096 + 1))[:size])
    return ModelFile(kind, name, path)


@pytest.fixture
def bucket_url(s3_endpoint, request):
    name = f"depot-{request.node.name.lower().replace('_', '-')[:40]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}/farm?endpoint_url={s3_endpoint}"


@pytest.mark.parametrize("backend", ["folder", "s3"])
def test_push_stores_the_file_under_its_sha256_with_a_record_and_skips_it_the_second_time(
        backend, tmp_path, request):
    store = open_store(tmp_path / "store" if backend == "folder" else request.getfixturevalue("bucket_url"))
    model = model_file(tmp_path / "models", "Deliberate_v2", 300_000)
    depot = Depot(store)
    sent_bytes = []
    record, sent = depot.push(model, sent_bytes.append)
    assert sent and sum(sent_bytes) == 300_000
    sha = sha256_file(model.path)
    assert record == DepotRecord(sha, "Deliberate_v2", "checkpoint", record.family, 300_000, sha[:10], ".safetensors")
    assert store.read_bytes(layout.model_object_key(sha)) == model.path.read_bytes()
    assert depot.record(sha) == record and depot.by_name("checkpoint", "Deliberate_v2") == record
    assert depot.records() == [record]
    with depot.open(depot.record(sha)) as f:
        assert f.read() == model.path.read_bytes()
    assert depot.push(model) == (record, False)  # already there: nothing sent


def test_s3_push_is_multipart_and_resumes_an_unfinished_upload(bucket_url, tmp_path, monkeypatch):
    import farm.store.s3 as s3

    monkeypatch.setattr(s3, "PART_BYTES", 5 << 20)  # S3's smallest part
    store = open_store(bucket_url)
    model = model_file(tmp_path / "models", "big", (5 << 20) * 3 + 1234)
    key = store._key(layout.model_object_key(sha256_file(model.path)))
    # a push stopped after its first part
    upload = store.client.create_multipart_upload(Bucket=store.bucket, Key=key)["UploadId"]
    store.client.upload_part(Bucket=store.bucket, Key=key, UploadId=upload, PartNumber=1,
                             Body=model.path.read_bytes()[: 5 << 20])
    sent_parts = []
    real = store.client.upload_part
    monkeypatch.setattr(store.client, "upload_part", lambda **kw: sent_parts.append(kw["PartNumber"]) or real(**kw))
    Depot(store).push(model)
    assert sorted(sent_parts) == [2, 3, 4]  # part 1 was not sent again
    with Depot(store).open(Depot(store).record(sha256_file(model.path))) as f:
        assert f.read() == model.path.read_bytes()


def test_cli_push_and_list(tmp_path):
    models = tmp_path / "models"
    model_file(models, "ckpt", 5000)
    model_file(models, "style", 3000, kind="lora", seed=3)
    store = tmp_path / "store"
    result = farm("models", "push", "ckpt", "style", "--models", str(models), "--store", str(store))
    assert result.returncode == 0, result.stderr
    assert "pushed: checkpoint ckpt" in result.stderr and "pushed: lora style" in result.stderr
    again = farm("models", "push", str(models / "Lora/style.safetensors"), "--store", str(store))
    assert "in the depot already: lora style" in again.stderr
    listed = farm("models", "list", "--store", str(store))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("checkpoint") and lines[1].startswith("lora")
    missing = farm("models", "push", "nothere", "--models", str(models), "--store", str(store))
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr


def cache_with(tmp_path: Path, *models: ModelFile, limit: int = 10**9, store=None) -> ModelCache:
    depot = Depot(store or LocalStore(tmp_path / "depot"))
    for m in models:
        depot.push(m)
    return ModelCache(tmp_path / "cache", limit, depot)


@pytest.mark.parametrize("backend", ["folder", "s3"])
def test_fetch_verifies_and_renames_and_the_registry_finds_the_file_by_name(backend, tmp_path, request):
    model = model_file(tmp_path / "models", "Deliberate_v2", 3 << 20)
    store = None if backend == "folder" else open_store(request.getfixturevalue("bucket_url"))
    reports = []
    cache = cache_with(tmp_path, model, store=store)
    cache.report = reports.append
    sha = sha256_file(model.path)
    path = cache.fetch(cache.depot.record(sha))
    assert path.read_bytes() == model.path.read_bytes() and cache.cached(sha) == path
    assert Registry(cache.root).resolve("checkpoint", "Deliberate_v2").path == path
    assert not list(path.parent.glob(".seedfarm-tmp-*"))
    assert reports[0].startswith("Deliberate_v2 ") and "MB/s" in reports[0] and reports[-1] == ""


def test_farm_workers_shows_a_download():
    from farm.status import worker_state

    assert worker_state({"download": "Deliberate_v2 45% 80 MB/s", "task": "j/t"}) == "fetching Deliberate_v2 45% 80 MB/s"
    assert worker_state({"download": "", "task": ""}) == "idle"


def test_farm_status_shows_the_downloads_for_the_jobs_tasks():
    from rich.console import Console

    from farm.ledger import JobStatus
    from farm.status import downloads, render_status

    class Workers:
        def workers(self):
            return [{"name": "pc1", "download": "Deliberate_v2 45% 80 MB/s", "task": "job1/abc"},
                    {"name": "pc2", "download": "other 1% 9 MB/s", "task": "job2/def"},
                    {"name": "pc3", "download": "", "task": "job1/ghi"}]

    st = JobStatus("job1", {"status": "running", "tasks": "2"}, 0, {}, {"abc": "pc1"}, {})
    lines = downloads(Workers(), st)
    assert lines == ["pc1 fetching Deliberate_v2 45% 80 MB/s"]
    console = Console(record=True, width=200)
    console.print(render_status(st, lines))
    assert "pc1 fetching Deliberate_v2 45% 80 MB/s" in console.export_text()


def test_a_corrupted_depot_object_is_refused_and_nothing_is_left(tmp_path):
    model = model_file(tmp_path / "models", "ckpt", 100_000)
    cache = cache_with(tmp_path, model)
    sha = sha256_file(model.path)
    bad = bytearray(model.path.read_bytes())
    bad[500] ^= 0xFF
    cache.depot.store.write_bytes(layout.model_object_key(sha), bytes(bad))
    with pytest.raises(TaskError, match="corrupted") as error:
        cache.fetch(cache.depot.record(sha))
    assert "\n" not in str(error.value)
    assert cache.cached(sha) is None
    assert not [f for f in cache.root.rglob("*") if f.is_file() and f.suffix != ".lock"]


def test_a_killed_download_leaves_nothing_trusted(tmp_path):
    model = model_file(tmp_path / "models", "ckpt", 100_000)
    cache = cache_with(tmp_path, model)
    sha = sha256_file(model.path)
    entry = cache.root / "Stable-diffusion" / sha
    entry.mkdir(parents=True)
    (entry / ".seedfarm-tmp-dead.tmp").write_bytes(model.path.read_bytes()[:5000])  # the killed one's part
    assert cache.cached(sha) is None and "ckpt" not in Registry(cache.root).files("checkpoint")
    cache.fetch(cache.depot.record(sha))
    assert [f.name for f in entry.iterdir() if f.name != ".used"] == ["ckpt.safetensors"]


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    model = model_file(tmp_path / "models", "ckpt", 100_000)
    cache = cache_with(tmp_path, model)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("worker.model_cache.os.fsync", full)
    with pytest.raises(TaskError, match="disk full in the model cache") as error:
        cache.fetch(cache.depot.record(sha256_file(model.path)))
    assert "\n" not in str(error.value)
    assert not [f for f in cache.root.rglob("*") if f.is_file() and f.suffix != ".lock"]


class Trickle:
    """A depot object read as a socket gives it: at most `step` bytes per read, counted; `fail_after`
    bytes in, the connection drops."""

    def __init__(self, f, step: int = 7_000, fail_after: int | None = None):
        self.f, self.step, self.fail_after, self.read = f, step, fail_after, 0

    def readinto(self, b):
        if self.fail_after is not None and self.read >= self.fail_after:
            raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")
        n = self.f.readinto(memoryview(b)[: self.step])
        self.read += n
        return n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


class TrickleStore(LocalStore):
    def __init__(self, root, **kw):
        super().__init__(root)
        self.kw, self.streams = kw, []

    def open_read(self, key):
        self.streams.append(Trickle(super().open_read(key), **self.kw))
        return self.streams[-1]


def test_a_fetch_in_short_reads_over_many_blocks_is_whole_and_verified(tmp_path, monkeypatch):
    monkeypatch.setattr("worker.model_cache.BLOCK", 64 << 10)  # 52 blocks through 16 reused buffers
    model = model_file(tmp_path / "models", "ckpt", (3 << 20) + 17)
    cache = cache_with(tmp_path, model, store=TrickleStore(tmp_path / "depot"))
    path = cache.fetch(cache.depot.record(sha256_file(model.path)))
    assert path.read_bytes() == model.path.read_bytes()


def test_an_object_larger_than_its_record_is_refused_after_reading_one_block_past_it(tmp_path, monkeypatch):
    monkeypatch.setattr("worker.model_cache.BLOCK", 64 << 10)
    model = model_file(tmp_path / "models", "ckpt", 100_000)
    store = TrickleStore(tmp_path / "depot")
    cache = cache_with(tmp_path, model, store=store)
    sha = sha256_file(model.path)
    store.write_bytes(layout.model_object_key(sha), model.path.read_bytes() * 50)  # 5 MB behind a 100 KB record
    with pytest.raises(TaskError, match="corrupted"):
        cache.fetch(cache.depot.record(sha))
    assert all(s.read <= 100_000 + 2 * (64 << 10) for s in store.streams)  # bounded by the record, not the object
    assert not [f for f in cache.root.rglob("*") if f.is_file() and f.suffix != ".lock"]


def test_a_connection_dropped_mid_download_is_the_depots_fault_retried_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("worker.model_cache.DEPOT_RETRY_DELAYS", (0.0,))
    model = model_file(tmp_path / "models", "ckpt", 3 << 20)
    store = TrickleStore(tmp_path / "depot", step=1 << 20, fail_after=2 << 20)
    cache = cache_with(tmp_path, model, store=store)
    with pytest.raises(DepotUnreachable, match="connection reset"):  # an OSError, but not the cache's disk
        cache.fetch(cache.depot.record(sha256_file(model.path)))
    assert len(store.streams) == 2  # tried again from the start
    assert not [f for f in cache.root.rglob("*") if f.is_file() and f.suffix != ".lock"]


def test_a_disk_that_fills_mid_download_is_one_line_and_the_copy_stops(tmp_path, monkeypatch):
    import builtins

    model = model_file(tmp_path / "models", "ckpt", 5 << 20)
    store = TrickleStore(tmp_path / "depot", step=1 << 20)
    cache = cache_with(tmp_path, model, store=store)

    class Full:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, b):
            if self.written >= 2 << 20:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(b)
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr("worker.model_cache.open", lambda *a: Full(builtins.open(*a)), raising=False)
    with pytest.raises(TaskError, match="disk full in the model cache"):
        cache.fetch(cache.depot.record(sha256_file(model.path)))
    assert store.streams[0].read <= 3 << 20  # the reader stopped at the failed write
    assert not [f for f in cache.root.rglob("*") if f.is_file() and f.suffix != ".lock"]


def test_the_copy_reads_no_more_than_its_buffers_ahead_of_the_hash():
    import io
    import time

    from worker.model_cache import BLOCK, _copied

    source = Trickle(io.BytesIO(bytes(40 * BLOCK)), step=BLOCK)
    blocks = _copied(source, io.BytesIO(), 40 * BLOCK, blocks=4)
    next(blocks)
    time.sleep(0.3)  # a slow hash: the reader waits for a buffer rather than reading on
    assert source.read <= 4 * BLOCK
    assert sum(len(b) for b in blocks) == 39 * BLOCK


class Unreachable(LocalStore):
    def open_read(self, key):
        raise ConnectionError("connection refused")


def test_an_unreachable_depot_is_retried_then_reported_and_fetching_stops_for_a_while(tmp_path, monkeypatch):
    monkeypatch.setattr("worker.model_cache.DEPOT_RETRY_DELAYS", (0.0, 0.0))
    model = model_file(tmp_path / "models", "ckpt", 10_000)
    cache = cache_with(tmp_path, model, store=Unreachable(tmp_path / "depot"))
    with pytest.raises(DepotUnreachable, match="unreachable"):
        cache.fetch(cache.depot.record(sha256_file(model.path)))
    assert not cache.can_fetch()
    assert cache.cached(sha256_file(model.path)) is None


def test_eviction_keeps_the_cache_under_its_size_and_never_drops_what_the_task_uses(tmp_path):
    a, b, c = (model_file(tmp_path / "models", n, 40_000, seed=i) for i, n in enumerate("abc"))
    cache = cache_with(tmp_path, a, b, c, limit=parse_size("90K"))
    sha = {m.name: sha256_file(m.path) for m in (a, b, c)}
    cache.in_use = {sha["a"]}
    cache.fetch(cache.depot.record(sha["a"]))
    cache.fetch(cache.depot.record(sha["b"]))
    cache.in_use = {sha["a"], sha["c"]}  # the running task needs a and c: b goes, though a is older
    cache.fetch(cache.depot.record(sha["c"]))
    assert cache.cached(sha["a"]) and cache.cached(sha["c"]) and cache.cached(sha["b"]) is None
    cache.in_use = {sha["a"], sha["c"]}
    with pytest.raises(TaskError, match="full of models in use"):
        cache.fetch(cache.depot.record(sha["b"]))
    with pytest.raises(TaskError, match="larger than the model cache"):
        cache_with(tmp_path, limit=1000).fetch(cache.depot.record(sha["b"]))


SHARED = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from farm.depot import Depot
    from farm.store import LocalStore
    from worker.model_cache import ModelCache

    class SlowFile:
        def __init__(self, f):
            self.f = f

        def readinto(self, b):
            time.sleep(0.05)
            return self.f.readinto(b)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    class Slow(LocalStore):  # a depot slow enough that the two processes overlap
        def open_read(self, key):
            return SlowFile(super().open_read(key))

    cache = ModelCache(Path(sys.argv[1]), 10**9, Depot(Slow(sys.argv[2])))
    real = cache.download
    def counted(*args):
        Path(sys.argv[4]).write_text("downloaded")
        real(*args)
    cache.download = counted
    print(cache.fetch(cache.depot.record(sys.argv[3])))
""")


def test_two_worker_processes_sharing_a_cache_download_a_model_once(tmp_path):
    model = model_file(tmp_path / "models", "shared", 3 << 20)
    cache_with(tmp_path, model)
    sha = sha256_file(model.path)
    script = tmp_path / "fetch.py"
    script.write_text(SHARED)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache"), str(tmp_path / "depot"), sha,
                               str(tmp_path / f"marker{i}")], stdout=subprocess.PIPE, text=True) for i in (0, 1)]
    paths = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(paths) == 1 and Path(paths.pop()).read_bytes() == model.path.read_bytes()
    assert len(list(tmp_path.glob("marker*"))) == 1  # one download; the other waited and used it


def test_ensure_fetches_the_pinned_checkpoint_vae_and_lora_tags_the_worker_lacks(tmp_path):
    from factories import make_task

    ckpt = model_file(tmp_path / "coord", "tinyA", 20_000)
    vae = model_file(tmp_path / "coord", "tinyvae", 9_000, kind="vae", seed=7)
    lora = model_file(tmp_path / "coord", "style", 7_000, kind="lora", seed=9)
    cache = cache_with(tmp_path, ckpt, vae, lora)
    task = make_task(checkpoint="tinyA", checkpoint_hash=sha256_file(ckpt.path), vae="tinyvae",
                     vae_hash=sha256_file(vae.path), prompt="a fox <lora:style:0.5>")
    empty = tmp_path / "own"
    empty.mkdir()
    cache.ensure(task, Registry(f"{empty}{__import__('os').pathsep}{cache.root}"))
    registry = Registry(cache.root)
    for kind, name, m in (("checkpoint", "tinyA", ckpt), ("vae", "tinyvae", vae), ("lora", "style", lora)):
        assert registry.resolve(kind, name).path.read_bytes() == m.path.read_bytes()
    assert cache.in_use == {sha256_file(m.path) for m in (ckpt, vae, lora)}
    assert not list(empty.iterdir())  # never into the user's own folder


def test_ensure_fetches_pinned_loras_and_embeddings_by_hash_when_the_same_named_files_here_differ(tmp_path):
    """The task pins style and emb15 by sha256 (lora_hashes, embedding_hashes): this PC's files by
    those names hold other bytes, so the pinned ones come from the depot by hash; a file here with
    the pin's bytes is used as it is (nothing fetched)."""
    import os

    from factories import make_task

    lora = model_file(tmp_path / "coord", "style", 7_000, kind="lora", seed=9)
    emb = tmp_path / "coord/embeddings/emb15.safetensors"
    emb.parent.mkdir(parents=True)
    emb.write_bytes(b"e" * 3000)
    detail = model_file(tmp_path / "coord", "detail", 5_000, kind="lora", seed=3)
    cache = cache_with(tmp_path, lora, ModelFile("embedding", "emb15", emb), detail)
    own = tmp_path / "own"
    model_file(own, "style", 7_000, kind="lora", seed=1)  # same name, other bytes
    (own / "embeddings").mkdir()
    (own / "embeddings/emb15.safetensors").write_bytes(b"x" * 3000)
    shutil.copy(detail.path, own / "Lora")  # detail: the pinned bytes
    pins = {name: sha256_file(m) for name, m in (("style", lora.path), ("detail", detail.path), ("emb15", emb))}
    task = make_task(checkpoint="m", prompt="a fox emb15 <lora:style:0.5> <lora:detail:1>",
                     lora_hashes={"style": pins["style"], "detail": pins["detail"]},
                     embedding_hashes={"emb15": pins["emb15"]})
    cache.ensure(task, Registry(f"{own}{os.pathsep}{cache.root}"))
    assert cache.cached(pins["style"]).read_bytes() == lora.path.read_bytes()
    assert cache.cached(pins["emb15"]).read_bytes() == emb.read_bytes()
    assert cache.cached(pins["detail"]) is None  # here already with the pinned bytes
    assert cache.in_use == {pins["style"], pins["emb15"]}


def test_push_models_of_a_job_names_the_checkpoint_vae_and_loras(tmp_path):
    from farm.depot import job_models
    from factories import make_task

    ckpt = model_file(tmp_path / "m", "tinyA", 2000)
    model_file(tmp_path / "m", "v", 1000, kind="vae")
    model_file(tmp_path / "m", "style", 1000, kind="lora")
    tasks = [make_task(checkpoint="tinyA", vae="v", prompt="x <lora:style:1> <lora:gone:1>")] * 3
    found, problems = job_models(tasks, Registry(tmp_path / "m"))
    assert sorted((m.kind, m.name) for m in found) == [("checkpoint", "tinyA"), ("lora", "style"), ("vae", "v")]
    assert len(problems) == 1 and "gone" in problems[0]
    assert model_to_push("tinyA", Registry(tmp_path / "m")).path == ckpt.path


def test_routing_leaves_a_fetch_to_holders_unless_none_or_their_queue_is_longer_than_the_fetch():
    routes = {"q.held": Route("normal", "mine", None, 4096), "q.fetch": Route("normal", "theirs", None, 4096)}
    caps = Capabilities({"mine": None}, fetchable={"theirs": 40.0})
    assert caps.why_not(routes["q.fetch"]) is None
    assert Capabilities({"mine": None}).why_not(routes["q.fetch"]) == "no checkpoint 'theirs' here"
    pending = {"q.held": 5, "q.fetch": 50}
    # no holder live: fetch it, but after the work on what this worker has
    assert queue_order(routes, pending, None, {}, render_seconds=2.0, fetch_seconds={"theirs": 40.0},
                       holders={}) == ["q.held", "q.fetch"]
    # two holders: 50 tasks / 2 x 2 s = 50 s > 40 s fetch: worth fetching
    assert "q.fetch" in queue_order(routes, pending, None, {}, render_seconds=2.0, fetch_seconds={"theirs": 40.0},
                                    holders={"theirs": 2})
    # five holders: 20 s of work each, less than the fetch: left to them
    assert queue_order(routes, pending, None, {}, render_seconds=2.0, fetch_seconds={"theirs": 40.0},
                       holders={"theirs": 5}) == ["q.held"]


def test_parse_size():
    assert not ModelCache(Path(tempfile.mkdtemp()), parse_size("0"), Depot(LocalStore(tempfile.mkdtemp()))).can_fetch()
    assert parse_size("200G") == 200 * 10**9 and parse_size("1.5T") == 1.5e12 and parse_size("500") == 500
    with pytest.raises(ValueError, match="200G"):
        parse_size("lots")


def test_a_hostile_record_is_ignored(tmp_path):
    store = LocalStore(tmp_path)
    sha = "a" * 64
    store.write_text(layout.model_record_key(sha), json.dumps({"sha256": sha, "name": "../x", "kind": "shell",
                                                               "family": "", "size": 1, "a1111_hash": "",
                                                               "suffix": ".sh"}))
    assert Depot(store).record(sha) is None and Depot(store).records() == []


# --- models kept at a URL, pinned by hash: a local HTTP server stands in for the internet -----------

def test_hf_urls_map_to_the_hub_resolve_url(monkeypatch):
    from farm.depot import resolve_url

    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert resolve_url("hf://org/repo/sub/m.safetensors") == "https://huggingface.co/org/repo/resolve/main/sub/m.safetensors"
    assert resolve_url("hf://org/repo@v2/m.safetensors") == "https://huggingface.co/org/repo/resolve/v2/m.safetensors"
    assert resolve_url("https://civitai.com/api/download/models/1?type=Model") == \
        "https://civitai.com/api/download/models/1?type=Model"


def test_a_linked_hf_model_is_fetched_from_the_url_verified_and_cached(web, tmp_path, monkeypatch):
    root, base = web
    model = model_file(tmp_path / "models", "flux-lora", 300_000, kind="lora")
    (root / "org/repo/resolve/main").mkdir(parents=True)
    shutil.copy(model.path, root / "org/repo/resolve/main/flux-lora.safetensors")
    monkeypatch.setenv("HF_ENDPOINT", base)
    depot = Depot(LocalStore(tmp_path / "depot"))
    record = depot.link("lora", "flux-lora", "hf://org/repo/flux-lora.safetensors", sha256_file(model.path))
    assert record.size == 300_000 and depot.by_name("lora", "flux-lora") == record  # size from a HEAD
    cache = ModelCache(tmp_path / "cache", 10**9, depot)
    assert cache.fetch(record).read_bytes() == model.path.read_bytes()
    assert Registry(cache.root).resolve("lora", "flux-lora").path == cache.cached(record.sha256)


def test_a_url_whose_file_is_not_the_pin_is_refused(web, tmp_path):
    root, base = web
    model = model_file(tmp_path / "models", "m", 50_000)
    (root / "m.safetensors").write_bytes(b"x" * 50_000)  # the file at the URL changed
    depot = Depot(LocalStore(tmp_path / "depot"))
    record = depot.link("checkpoint", "m", f"{base}/m.safetensors", sha256_file(model.path))
    with pytest.raises(TaskError, match="corrupted"):
        ModelCache(tmp_path / "cache", 10**9, depot).fetch(record)


def test_a_worker_that_cannot_reach_the_url_says_so_in_one_line(tmp_path, monkeypatch):
    from conftest import free_port

    monkeypatch.setattr("worker.model_cache.DEPOT_RETRY_DELAYS", (0.0,))
    depot = Depot(LocalStore(tmp_path / "depot"))
    url = f"http://127.0.0.1:{free_port()}/m.safetensors"  # nothing listens: offline
    record = depot.link("checkpoint", "m", url, "b" * 64, size=1000)
    with pytest.raises(DepotUnreachable) as error:
        ModelCache(tmp_path / "cache", 10**9, depot).fetch(record)
    assert str(error.value).startswith(f"cannot reach {url} to fetch checkpoint 'm'")
    assert "is this PC online?" in str(error.value) and "\n" not in str(error.value)


def test_cli_link_and_list(web, tmp_path):
    root, base = web
    (root / "m.safetensors").write_bytes(b"y" * 1234)
    store = tmp_path / "store"
    result = farm("models", "link", "civitai-m", f"{base}/m.safetensors", "--sha256", "c" * 64, "--store", str(store))
    assert result.returncode == 0, result.stderr
    listed = farm("models", "list", "--store", str(store))
    assert f"civitai-m  <- {base}/m.safetensors" in listed.stdout and "1.2 KB" in listed.stdout
    bad = farm("models", "link", "x", "ftp://host/x.safetensors", "--sha256", "c" * 64, "--store", str(store))
    assert bad.returncode == 1 and "expected hf://" in bad.stderr and "Traceback" not in bad.stderr


def test_a_worker_with_an_unusable_depot_says_so_in_one_line(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    result = farm("worker", "--broker", "redis://127.0.0.1:1/0", "--models", str(models), "--depot", "ftp://x/y",
                  "--model-cache", str(tmp_path / "cache"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "model cache or depot: ftp://x/y: unsupported store URL scheme" in result.stderr


def test_a_depot_that_does_not_answer_a_lookup_is_left_alone_for_a_while(tmp_path):
    class Down(LocalStore):
        looks = 0

        def read_bytes(self, key):
            Down.looks += 1
            raise ConnectionError("no route to host")

    cache = ModelCache(tmp_path / "cache", 10**9, Depot(Down(tmp_path / "depot")))
    assert cache.lookup("checkpoint", "m", "d" * 64) is None
    assert not cache.can_fetch() and Down.looks == 1  # steering offers no fetching now


def test_a_task_the_depot_cannot_serve_goes_back_while_a_holder_is_live_or_the_wait_is_short(monkeypatch):
    from factories import make_task
    from worker.model_cache import depot_wait

    class Ledger:
        def __init__(self, workers, since):
            self._workers, self.since = workers, since

        def workers(self):
            return self._workers

        def depot_wait_since(self, job, task_id, bound):
            return self.since

    import time

    task = make_task(checkpoint="tinyA")
    down = DepotUnreachable("cannot reach http://x/tinyA.safetensors to fetch checkpoint 'tinyA' (refused)", "checkpoint")
    holder = {"name": "pc2", "holds": '["tinyA"]', "paused": ""}
    long_ago = time.time() - 10_000
    assert depot_wait(Ledger([holder], long_ago), "pc1", task, down) is None  # pc2 renders it
    assert depot_wait(Ledger([], time.time() - 5), "pc1", task, down) is None  # the depot may come back
    # no one else: this worker itself, a paused holder, or a holder of another checkpoint
    others = [{"name": "pc1", "holds": '["tinyA"]'}, {**holder, "paused": "gaming"},
              {"name": "pc3", "holds": '["tinyB"]'}]
    reason = depot_wait(Ledger(others, long_ago), "pc1", task, down)
    assert reason.startswith("cannot reach http://x/") and "no live worker holds it" in reason and "\n" not in reason
    # a LoRA the depot cannot serve: a checkpoint holder may lack it too, only the wait counts
    assert depot_wait(Ledger([holder], long_ago), "pc1", task, DepotUnreachable("x", "lora")) is not None


def test_a_worker_whose_depot_went_quiet_does_not_fail_a_task_that_needs_a_fetch(tmp_path):
    from factories import make_task

    model = model_file(tmp_path / "models", "ckpt", 10_000)
    cache = cache_with(tmp_path, model)
    cache.down_until = __import__("time").time() + 60
    task = make_task(checkpoint="ckpt", checkpoint_hash=sha256_file(model.path))
    with pytest.raises(DepotUnreachable, match="did not answer lately") as error:
        cache.ensure(task, Registry(cache.root))
    assert error.value.kind == "checkpoint"


# --- models a spec gives by URL and sha256 ------------------------------------------------------------

URL_SPEC = """\
name: by-url
prompt: a fox
checkpoint: [tinyA, {url: "hf://org/repo/sub/Deliberate_v2.safetensors", sha256: %s}]
vae: {url: "https://example.com/dl/myvae.safetensors?v=2", sha256: %s, name: clear-vae}
lora: {url: "https://civitai.com/api/download/models/1/style.safetensors", sha256: %s}
seed: 1
steps: 2
size: 64x64
"""


def test_a_spec_gives_models_by_url_pinned_without_the_files_and_every_task_carries_them(tmp_path):
    from farm.expand import expand
    from farm.messages import route_of
    from farm.spec import parse_spec
    from farm.task import RenderTask

    model_file(tmp_path / "m", "tinyA", 2000)
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    spec = parse_spec(URL_SPEC % (a, b.upper(), c), "job.yaml", models_dir=tmp_path / "m")
    assert spec.values["checkpoint"] == ["tinyA", "Deliberate_v2"] and spec.values["vae"] == ["clear-vae"]
    tasks = list(expand(spec))
    by_url = next(t for t in tasks if t.checkpoint == "Deliberate_v2")
    assert by_url.checkpoint_hash == a and by_url.vae_hash == b and "<lora:style:1>" in by_url.prompt
    assert by_url.model_urls == {
        "checkpoint:Deliberate_v2": (a, "hf://org/repo/sub/Deliberate_v2.safetensors"),
        "vae:clear-vae": (b, "https://example.com/dl/myvae.safetensors?v=2"),
        "lora:style": (c, "https://civitai.com/api/download/models/1/style.safetensors")}
    assert route_of(by_url).url == "hf://org/repo/sub/Deliberate_v2.safetensors"
    named = next(t for t in tasks if t.checkpoint == "tinyA")
    assert route_of(named).url == "" and "url" not in route_of(named).to_json()  # queue names as before
    assert RenderTask.from_json(by_url.to_json()) == by_url  # travels as JSON


@pytest.mark.parametrize("value, message", [
    ('{url: "ftp://x/m.safetensors", sha256: %s}' % ("a" * 64), "4:19: checkpoint: url: expected hf://ORG/REPO/FILE"),
    ('{url: "hf://o/r/m.safetensors"}', "4:13: checkpoint: a model given by URL needs url: and sha256:"),
    ('{url: "hf://o/r/m.txt", sha256: %s}' % ("a" * 64), "4:19: checkpoint: url: a checkpoint file ends in .safetensors"),
    ('{url: "hf://o/r/m.safetensors", sha256: xyz}', "4:53: checkpoint: sha256: expected the file's SHA-256"),
    ('{url: "hf://o/r/m.safetensors", sha: 1}', "4:45: unknown key 'sha' in a checkpoint given by URL (did you mean 'sha256'?)"),
])
def test_a_bad_model_url_in_a_spec_is_one_located_line(value, message):
    from farm.spec import SpecError, parse_spec

    with pytest.raises(SpecError) as error:
        parse_spec(f"name: x\nprompt: a\nseed: 1\ncheckpoint: {value}\n", "job.yaml")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_worker_fetches_a_url_model_the_task_carries_and_offline_says_so_in_one_line(web, tmp_path):
    from factories import make_task
    from conftest import free_port

    root, base = web
    model = model_file(tmp_path / "models", "m", 40_000)
    (root / "m.safetensors").write_bytes(model.path.read_bytes())
    sha = sha256_file(model.path)
    cache = ModelCache(tmp_path / "cache", 10**9, Depot(LocalStore(tmp_path / "depot")))
    task = make_task(checkpoint="m", checkpoint_hash=sha, model_urls={"checkpoint:m": (sha, f"{base}/m.safetensors")})
    cache.ensure(task, Registry(cache.root))
    assert Registry(cache.root).resolve("checkpoint", "m").path.read_bytes() == model.path.read_bytes()
    dead = f"http://127.0.0.1:{free_port()}/n.safetensors"  # nothing listens: offline
    task = make_task(checkpoint="n", checkpoint_hash="d" * 64, model_urls={"checkpoint:n": ("d" * 64, dead)})
    with pytest.raises(DepotUnreachable) as error:
        cache.ensure(task, Registry(cache.root))
    assert str(error.value).startswith(f"cannot reach {dead} to fetch checkpoint 'n' (")
    assert str(error.value).endswith("is this PC online?") and "\n" not in str(error.value)


def test_a_same_named_vae_and_url_lora_with_other_weights_here_give_way_to_the_cached_pinned_copies(
        tmp_path_factory, tmp_path):
    """The user's own tinyvae and style15 are other files than the job pinned: the render uses the
    model cache's copies (as for checkpoints and text encoders), never the user's."""
    import os

    from model_tree import a1111_tree, render, tiny_task
    from farm.models import lora_hash
    from worker.context import WorkerContext
    from worker.tiny import make_tiny_lora, make_tiny_vae

    tree = a1111_tree(tmp_path_factory)
    own = tmp_path / "own"
    shutil.copytree(tree / "models/Stable-diffusion", own / "Stable-diffusion")
    make_tiny_vae(own, "tinyvae", seed=11)  # same names, other weights
    make_tiny_lora(own, "style15", seed=12)
    pinned = {"vae": tree / "models/VAE/tinyvae.safetensors", "lora": tree / "models/Lora/style15.safetensors"}
    cache = ModelCache(tmp_path / "cache", 10**9, Depot(LocalStore(tmp_path / "depot")))
    for kind, path in pinned.items():
        entry = cache.root / {"vae": "VAE", "lora": "Lora"}[kind] / sha256_file(path)
        entry.mkdir(parents=True)
        shutil.copy(path, entry)
    lora_sha = sha256_file(pinned["lora"])
    task = tiny_task(vae="tinyvae", vae_hash=sha256_file(pinned["vae"]), prompt="a fox <lora:style15:0.8>",
                     model_urls={"lora:style15": (lora_sha, "https://example.com/style15.safetensors")})
    ctx = WorkerContext(models_dir=f"{own}{os.pathsep}{cache.root}", model_cache=cache)
    _, params = render(ctx, task, tmp_path / "out")
    assert params["VAE hash"] == sha256_file(pinned["vae"])[:10]
    assert params["Lora hashes"] == f"style15: {lora_hash(pinned['lora'])[:12]}"


def test_embeddings_are_pushed_with_a_job_and_fetched_by_the_word_that_names_them(tmp_path):
    from factories import make_task
    from farm.depot import job_models

    coord = tmp_path / "coord"
    emb = coord / "embeddings" / "emb15.safetensors"
    emb.parent.mkdir(parents=True)
    emb.write_bytes(b"e" * 3000)
    model_file(coord, "tinyA", 2000)
    task = make_task(checkpoint="tinyA", prompt="a fox", negative_prompt="emb15, blurry")
    found, problems = job_models([task], Registry(coord))
    assert sorted((m.kind, m.name) for m in found) == [("checkpoint", "tinyA"), ("embedding", "emb15")] and not problems
    cache = cache_with(tmp_path, *found)
    assert cache.depot.names("embedding") == ["emb15"]
    cache.ensure(make_task(checkpoint="tinyA", prompt="a fox emb15-like, not emb15x"), Registry(cache.root))
    assert "emb15" not in Registry(cache.root).files("embedding")  # no word names it
    cache.ensure(task, Registry(cache.root))
    assert Registry(cache.root).resolve("embedding", "emb15").path.read_bytes() == emb.read_bytes()
