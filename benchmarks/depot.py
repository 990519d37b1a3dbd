"""Fetching a model from the depot: a GB-sized checkpoint in a local S3 endpoint (moto's server on
127.0.0.1), fetched by a worker that lacks it, against the limits on the same machine.

  push            `Depot.push` into the bucket (multipart, 4 threads)
  copy            the kernel's copy of the same bytes (shutil.copyfile), fsync'd
  sha256          hashlib alone over the same number of bytes in memory (8 MiB buffers): this CPU's bound
  get             plain S3 GET of the object into a file (1 MiB reads), fsync'd, no hashing: THE LIMIT
  fetch           worker/model_cache.py's fetch: streamed, sha256 while streaming, fsync, rename
  first_image     submit -> first image stored, on a real `farm worker` with an empty models folder
                  that must fetch the checkpoint (rendering stood in: FARM_STANDIN, worker/standin.py),
                  and the same for a second job on that worker (from its cache)
  folder_*        the same bytes in a folder-store depot on another path (as a NAS mount is): its
                  plain read and the worker's fetch, against the plain copy: the fetch path's own
                  overhead, without moto's single Python server in the way (folder_read is
                  the plain streamed copy from that depot: the folder case's limit)

The ratios the issue's target is about (within 1.2x of the limit): first_image_over_get and
fetch_over_get (S3), folder_fetch_over_read (folder); the kernel copy and sha256 for reference.

The file is padding (the stand-in renderer never reads it): this measures moving, verifying and
caching the bytes, not loading them. Usage: python benchmarks/depot.py [GB] [--folder-only]"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import Redis, Workers, emit, free_port, wait_until  # noqa: E402


def write_padding(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(64 << 20)  # incompressible; each block numbered so no two are equal
    with open(path, "wb") as f:
        for i in range(0, size, len(block)):
            f.write((i.to_bytes(8, "little") + block[8:])[: size - i])


def fsynced(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    gb = float(args[0]) if args else 2.0
    size = int(gb * 1e9)
    import boto3

    from farm.depot import Depot
    from farm.dispatch import submit
    from farm.hashes import sha256_file
    from farm.ledger import Ledger
    from farm.models import ModelFile
    from farm.spec import parse_spec
    from farm.store import LocalStore, layout, open_store
    from farm.store.base import CHUNK
    from worker.model_cache import ModelCache

    work = Path(tempfile.mkdtemp(prefix="farm-bench-depot-"))
    os.environ["FARM_CACHE_DIR"] = str(work / "hash-cache")  # not the user's hash cache
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # moto accepts any
        os.environ.setdefault(key, "bench")
    moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p",
                             str(port := free_port())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    redis = workers = None
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(endpoint), 30, "moto_server", 0.1)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="depot")
        url = f"s3://depot/farm?endpoint_url={endpoint}&region=us-east-1"
        source = work / "models" / "Stable-diffusion" / "big.safetensors"
        write_padding(source, size)
        sha = sha256_file(source)  # as `farm models push` does first (then cached by path, size, mtime)
        depot = Depot(open_store(url))
        result = {"bytes": size}

        def timing(name: str, fn) -> None:
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            seconds = time.perf_counter() - start
            # this process's CPU seconds (all its threads): what the step costs whatever the load
            result[name] = {"seconds": round(seconds, 2), "MB/s": round(size / 1e6 / seconds, 1),
                            "cpu": round(time.process_time() - cpu, 2)}

        copy = work / "copy.bin"
        timing("copy", lambda: (shutil.copyfile(source, copy), fsynced(copy)))
        copy.unlink()

        def plain_get() -> None:
            with depot.open(depot.record(sha)) as source, open(copy, "wb") as f:
                shutil.copyfileobj(source, f, CHUNK)
                os.fsync(f.fileno())

        def sha256_alone() -> None:
            block, digest = bytes(8 << 20), hashlib.sha256()
            for _ in range(size // len(block)):
                digest.update(block)

        # a folder-store depot on another path (a NAS mount): the fetch path's own cost
        nas = Depot(LocalStore(work / "nas"))
        nas.push(ModelFile("checkpoint", "big", source))

        def folder_read() -> None:
            with nas.open(nas.record(sha)) as source, open(copy, "wb") as f:
                shutil.copyfileobj(source, f, CHUNK)
                os.fsync(f.fileno())

        timing("sha256", sha256_alone)
        timing("folder_copy", lambda: (shutil.copyfile(nas.store.path(layout.model_object_key(sha)), copy), fsynced(copy)))
        copy.unlink()
        timing("folder_read", folder_read)
        copy.unlink()
        timing("folder_fetch", lambda: ModelCache(work / "folder-cache", 10**12, nas).fetch(nas.record(sha)))
        shutil.rmtree(work / "folder-cache")
        for a, b in (("folder_fetch", "folder_read"), ("folder_fetch", "folder_copy")):
            result[f"{a}_over_{b.removeprefix('folder_')}"] = round(result[a]["seconds"] / result[b]["seconds"], 2)
        result["load"] = os.getloadavg()  # the machine is shared: figures vary with it
        if "--folder-only" in sys.argv:
            emit("depot", result)
            return

        timing("push", lambda: depot.push(ModelFile("checkpoint", "big", source)))
        timing("get", plain_get)
        copy.unlink()
        cache = ModelCache(work / "cache", 10**12, depot)
        timing("fetch", lambda: cache.fetch(depot.record(sha)))
        shutil.rmtree(work / "cache")

        # submit -> first image on a worker that must fetch it, then from its cache
        empty = work / "empty"
        empty.mkdir()
        redis = Redis()
        workers = Workers(1, redis.url, empty, env={"FARM_STANDIN": "0.5,0.05", "OMP_NUM_THREADS": "1"},
                          args=("--model-cache", str(work / "cache"), "--depot", url, "--store", str(work / "out")))
        workers.wait_ready()
        ledger = Ledger(redis.client)
        for label, seed in (("first_image_fetching", 1), ("first_image_cached", 2)):
            spec = parse_spec(f"name: fetch{seed}\nprompt: x\ncheckpoint: big\nsize: 64x64\nsteps: 2\nseed: {seed}\n",
                              models_dir=work / "models")
            start = time.perf_counter()
            submit(spec, open_store(work / "out"), redis.url)
            wait_until(lambda: ledger.status(spec.job_id).done >= 1, 1800, label, 0.05)
            result[label] = {"seconds": round(time.perf_counter() - start, 2)}
        for a, b in (("first_image_fetching", "get"), ("fetch", "get"), ("fetch", "copy")):
            result[f"{a.removesuffix('_fetching')}_over_{b}"] = round(result[a]["seconds"] / result[b]["seconds"], 2)
        result["load"] = os.getloadavg()
        emit("depot", result)
    finally:
        if workers:
            workers.stop()
        if redis:
            redis.stop()
        moto.terminate()
        moto.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def _answers(endpoint: str) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(endpoint, timeout=1)
        return True
    except Exception as e:
        return "HTTP Error" in str(e)


if __name__ == "__main__":
    main()
