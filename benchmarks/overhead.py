"""Overhead of the farm over the plain diffusers call: the tiny model, 64x64, 2 steps, N images,
rendered (1) by a plain diffusers loop, (2) by `farm run` (in process), (3) by Redis + 1 worker.
Model loading is excluded from all three; everything else (PNG + infotext, store writes, records,
queueing, the ledger) counts. Usage: python benchmarks/overhead.py [N]"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).parent))

from harness import Redis, Workers, emit, wait_until  # noqa: E402

SPEC = """name: overhead
prompt: a lighthouse at dusk
checkpoint: seedfarm-tiny
size: 64x64
steps: 2
sampler: Euler
cfg: 7
seed: 1-{n}
"""


def plain(models: Path, n: int) -> float:
    import torch

    from worker.pipelines import load_pipeline
    from worker.samplers import make_scheduler

    pipe = load_pipeline(models / "Stable-diffusion" / "seedfarm-tiny.safetensors")
    pipe.scheduler = make_scheduler(pipe.scheduler.config, "Euler", "Automatic")
    run = lambda seed: pipe("a lighthouse at dusk", num_inference_steps=2, guidance_scale=7, width=64, height=64,  # noqa: E731
                            generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    run(0)  # warm-up, as the farm's first render pays the same
    start = time.perf_counter()
    for seed in range(1, n + 1):
        run(seed)
    return n / (time.perf_counter() - start)


def farm_run(models: Path, spec_path: Path, out: Path) -> float:
    from farm.spec import load_spec
    from farm.store import open_store
    from worker import tasks
    from worker.local import run_local

    summary = run_local(load_spec(spec_path, models), open_store(out), models)
    return summary.images / (summary.seconds - tasks.context().load_seconds)


def via_redis(models: Path, spec_path: Path, out: Path, n: int) -> float:
    from farm.dispatch import submit
    from farm.ledger import Ledger
    from farm.spec import load_spec
    from farm.store import open_store

    redis = Redis()
    workers = Workers(1, redis.url, models)
    try:
        workers.wait_ready()
        ledger = Ledger(redis.client)
        spec = load_spec(spec_path, models)
        start = time.perf_counter()
        submit(spec, open_store(out), redis.url)
        wait_until(lambda: ledger.status(spec.job_id).done >= spec.task_count(), 600, "the job")
        elapsed = time.perf_counter() - start
        load = ledger.status(spec.job_id).workers["w0"]["load_seconds"]
        return n / (elapsed - load)
    finally:
        workers.stop()
        redis.stop()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    from worker.tiny import make_tiny

    work = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    models = work / "models"
    make_tiny(models)
    (work / "spec.yaml").write_text(SPEC.format(n=n))
    results = {"plain": plain(models, n)}
    results["farm_run"] = farm_run(models, work / "spec.yaml", work / "out-local")
    results["redis_1_worker"] = via_redis(models, work / "spec.yaml", work / "out-redis", n)
    emit("overhead", {
        "images": n, "size": "64x64", "steps": 2,
        "images_per_s": {k: round(v, 2) for k, v in results.items()},
        "ratio_farm_run": round(results["farm_run"] / results["plain"], 3),
        "ratio_redis": round(results["redis_1_worker"] / results["plain"], 3),
    })


if __name__ == "__main__":
    main()
