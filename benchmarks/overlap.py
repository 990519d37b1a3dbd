"""Overlap of storing with rendering: `farm run` with the stand-in renderer (RENDER_S seconds per
image, no diffusion) making N gray-noise images of 512x512 (PNG encoding costs more than for a
real render), stored in a folder and in S3 (moto's server on 127.0.0.1). Reports images/s against
the ideal 1/RENDER_S, the store's own cost per image (the writer thread's time: PNG + infotext +
image and record writes, and the exists() check before them, also timed alone), and what a render-then-store loop would reach with that cost.
Usage: python benchmarks/overlap.py [N] [RENDER_S]"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import emit, free_port, wait_until  # noqa: E402

SPEC = """name: overlap-{tag}
prompt: a lighthouse at dusk
checkpoint: seedfarm-tiny
size: 512x512
steps: 20
sampler: Euler
seed: 1-{n}
"""


def run(store_url: str, models: Path, spec_path: Path, render_s: float) -> dict:
    from farm.spec import load_spec
    from farm.store import open_store, record_keys
    from worker.context import context
    from worker.local import run_local

    spec = load_spec(spec_path, models)
    summary = run_local(spec, open_store(store_url), models, max_batch=1)
    ctx = context()
    rate = summary.images / (summary.seconds - ctx.load_seconds)
    store_s = ctx.writer.write_seconds / summary.images
    # The writer's exists() check before each image (first stored wins, issue 17), timed alone:
    # a stat on a folder, a HEAD on S3. Part of store_seconds_per_image.
    store = open_store(store_url)
    keys = record_keys(store, spec.job_id)
    started = time.perf_counter()
    for key in keys:
        store.exists(key)
    exists_s = (time.perf_counter() - started) / len(keys)
    return {
        "images_per_s": round(rate, 3),
        "efficiency": round(rate * render_s, 3),
        "store_seconds_per_image": round(store_s, 4),
        "exists_check_seconds_per_image": round(exists_s, 5),
        "render_then_store_efficiency": round(render_s / (render_s + store_s), 3),
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    render_s = float(sys.argv[2]) if len(sys.argv) > 2 else 0.2
    os.environ["FARM_STANDIN"] = f"0,{render_s}"
    # moto accepts any credentials; boto3 wants some
    for key, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(key, value)
    from worker.tiny import make_tiny

    work = Path(tempfile.mkdtemp(prefix="farm-bench-overlap-"))
    models = work / "models"
    make_tiny(models)
    port = free_port()
    moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import boto3

        endpoint = f"http://127.0.0.1:{port}"

        def bucket() -> bool:
            try:
                boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
                return True
            except Exception:
                return False

        wait_until(bucket, 30, "moto's S3 server", interval=0.2)
        results = {}
        for tag, store_url in (("folder", str(work / "out")), ("s3", f"s3://bench/out?endpoint_url={endpoint}")):
            spec = work / f"{tag}.yaml"
            spec.write_text(SPEC.format(tag=tag, n=n))
            results[tag] = run(store_url, models, spec, render_s)
    finally:
        moto.terminate()
        moto.wait(10)
    emit("overlap", {"images": n, "size": "512x512", "render_seconds": render_s, **results})


if __name__ == "__main__":
    main()
