"""Overhead of the farm over the plain diffusers call: the tiny model, 64x64, 2 steps, N images
(a seed sweep), rendered (1) by a plain diffusers loop, (2) by `farm run` (in process), (3) by
Redis + 1 worker; each unbatched (one image per diffusion call: plain calls of 1, the farm with
--max-batch 1) and batched (plain calls of 8 images; the farm batching its tasks, default max 8).
Model loading is excluded; everything else (PNG + infotext, store writes, records, queueing, the
ledger) counts. Best of REPEATS interleaved runs.
Usage: python benchmarks/overhead.py [N] [REPEATS]"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import datetime
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


def plain_runner(models: Path):
    """The plain diffusers call, one image per call, each with its own CPU generator."""
    import torch

    from worker.pipelines import load_pipeline
    from worker.samplers import make_scheduler

    pipe = load_pipeline(models / "Stable-diffusion" / "seedfarm-tiny.safetensors")
    pipe.scheduler = make_scheduler(pipe.scheduler.config, "Euler", "Automatic")

    def run(seeds: range, batch: int = 1) -> float:
        start = time.perf_counter()
        for i in range(0, len(seeds), batch):
            chunk = seeds[i : i + batch]
            pipe("a lighthouse at dusk", num_inference_steps=2, guidance_scale=7, width=64, height=64,
                 num_images_per_prompt=len(chunk), generator=[torch.Generator("cpu").manual_seed(s) for s in chunk])
        return len(seeds) / (time.perf_counter() - start)

    run(range(2))  # warm-up, as the farm's first render pays the same
    return run


def farm_run(models: Path, spec_path: Path, out: Path, max_batch: int | None) -> float:
    from farm.spec import load_spec
    from farm.store import open_store
    from worker.context import context
    from worker.local import run_local

    summary = run_local(load_spec(spec_path, models), open_store(out), models, max_batch=max_batch)
    return summary.images / (summary.seconds - context().load_seconds)


class RedisFarm:
    """Redis and one worker process, started once; jobs are run on it one after the other (the
    first pays the model load, which is subtracted)."""

    def __init__(self, models: Path, out: Path, worker_args: tuple[str, ...] = ()):
        from farm.ledger import Ledger

        self.models, self.out = models, out
        self.redis = Redis()
        self.workers = Workers(1, self.redis.url, models, args=worker_args)
        self.workers.wait_ready()
        self.ledger = Ledger(self.redis.client)

    def run(self, spec_path: Path) -> float:
        from farm.dispatch import submit
        from farm.spec import load_spec
        from farm.store import load_records, open_store

        spec = load_spec(spec_path, self.models)
        store = open_store(self.out)
        start = time.time()
        submit(spec, store, self.redis.url)
        # a slow poll, so that the benchmark does not take CPU from the worker; the end is the
        # time the last image record was written, which the records say to the millisecond
        wait_until(lambda: self.ledger.status(spec.job_id).done >= spec.task_count(), 600, "the job", interval=0.25)
        elapsed = max(datetime.fromisoformat(r["finished_at"]).timestamp()
                      for r in load_records(store, spec.job_id)) - start
        load = self.ledger.status(spec.job_id).workers["w0"]["load_seconds"]
        return spec.image_count() / (elapsed - load)

    def stop(self) -> None:
        self.workers.stop()
        self.redis.stop()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    from worker.tiny import make_tiny

    work = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    models = work / "models"
    make_tiny(models)

    def specs(tag: str) -> list[Path]:  # different seeds per run: a re-run would find its images done
        paths = []
        for r in range(repeats):
            paths.append(work / f"spec-{tag}{r}.yaml")
            paths[-1].write_text(SPEC.format(n=n).replace(f"seed: 1-{n}", f"seed: {1 + r * n}-{(r + 1) * n}")
                                 .replace("name: overhead", f"name: overhead-{tag}{r}"))
        return paths

    single, batched = specs("single"), specs("batched")
    # Interleaved repeats, best of each: a shared 2-core machine is noisy and drifts, and the best
    # run is the one least disturbed by anything else. The Redis farms idle while the others run.
    plain = plain_runner(models)
    farms = {"redis_1_worker": RedisFarm(models, work / "out-redis", ("--max-batch", "1")),
             "redis_1_worker_batched": RedisFarm(models, work / "out-redis-batched")}
    runs = {name: [] for name in ("plain", "farm_run", "redis_1_worker",
                                  "plain_batch8", "farm_run_batched", "redis_1_worker_batched")}
    try:
        for r in range(repeats):
            seeds = range(1 + r * n, 1 + (r + 1) * n)
            runs["plain"].append(plain(seeds))
            runs["farm_run"].append(farm_run(models, single[r], work / "out-local", max_batch=1))
            runs["redis_1_worker"].append(farms["redis_1_worker"].run(single[r]))
            runs["plain_batch8"].append(plain(seeds, batch=8))
            runs["farm_run_batched"].append(farm_run(models, batched[r], work / "out-local", max_batch=None))
            runs["redis_1_worker_batched"].append(farms["redis_1_worker_batched"].run(batched[r]))
    finally:
        for farm in farms.values():
            farm.stop()
    best = {k: max(v) for k, v in runs.items()}
    emit("overhead", {
        "images": n, "size": "64x64", "steps": 2, "repeats": repeats,
        "images_per_s": {k: round(v, 2) for k, v in best.items()},
        "all_runs": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "ratio_farm_run": round(best["farm_run"] / best["plain"], 3),
        "ratio_redis": round(best["redis_1_worker"] / best["plain"], 3),
        "ratio_farm_run_batched": round(best["farm_run_batched"] / best["plain_batch8"], 3),
        "ratio_redis_batched": round(best["redis_1_worker_batched"] / best["plain_batch8"], 3),
        "batching_speedup_farm_run": round(best["farm_run_batched"] / best["farm_run"], 3),
    })

if __name__ == "__main__":
    main()
