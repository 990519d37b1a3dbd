"""Scaling: a stand-in renderer that sleeps a fixed time per image (worker/standin.py), on
1/2/4/8 real `farm worker` processes sharing one Redis. Efficiency = measured throughput / ideal
(workers / seconds per image). Usage: python benchmarks/scaling.py [SECONDS_PER_IMAGE] [IMAGES_PER_WORKER]"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import Redis, Workers, emit, wait_until  # noqa: E402


def run(n_workers: int, seconds: float, per_worker: int, work: Path) -> dict:
    from farm.dispatch import submit
    from farm.ledger import Ledger
    from farm.spec import parse_spec
    from farm.store import open_store

    images = n_workers * per_worker
    spec = parse_spec(f"name: scale{n_workers}\nprompt: x\ncheckpoint: standin\nsize: 64x64\nsteps: 2\n"
                      f"seed: 1-{images}\n", models_dir=work / "models")
    redis = Redis()
    workers = Workers(n_workers, redis.url, work / "models", env={"FARM_STANDIN": f"0,{seconds}",
                                                                   "OMP_NUM_THREADS": "1"})
    try:
        workers.wait_ready()
        ledger = Ledger(redis.client)
        start = time.perf_counter()
        submit(spec, open_store(work / f"out{n_workers}"), redis.url)
        first = wait_until(lambda: ledger.status(spec.job_id).done >= 1 and time.perf_counter(), 600, "a first image")
        wait_until(lambda: ledger.status(spec.job_id).done >= images, 600, "the job")
        elapsed = time.perf_counter() - start
    finally:
        workers.stop()
        redis.stop()
    ideal = n_workers / seconds
    # start latency: submit until the first image is done, less one render (queueing + routing)
    start_latency = first - start - seconds
    return {"workers": n_workers, "images": images, "seconds": round(elapsed, 2),
            "images_per_s": round(images / elapsed, 2), "ideal_images_per_s": ideal,
            "efficiency": round(images / elapsed / ideal, 3),
            "start_latency_s": round(start_latency, 2),
            "efficiency_after_start": round(images / (elapsed - start_latency) / ideal, 3)}


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
    per_worker = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    work = Path(tempfile.mkdtemp(prefix="farm-bench-scaling-"))
    (work / "models" / "Stable-diffusion").mkdir(parents=True)
    # the stand-in never reads the file; the worker only needs to find the checkpoint by name
    (work / "models" / "Stable-diffusion" / "standin.safetensors").write_bytes(b"\0" * 16)
    rows = [run(n, seconds, per_worker, work) for n in (1, 2, 4, 8)]
    emit("scaling", {"seconds_per_image": seconds, "images_per_worker": per_worker, "runs": rows})


if __name__ == "__main__":
    main()
