"""Checkpoint loads: 4 checkpoints x 64 tasks on 3 workers with a simulated load cost
(worker/standin.py), in spec order. Measured with the farm's model affinity; compared with a
plain FIFO queue in spec order, simulated with the same costs (each worker takes the next task
and loads its checkpoint when it differs from the one it holds).
Usage: python benchmarks/loads.py [LOAD_SECONDS] [RENDER_SECONDS]"""

from __future__ import annotations

import heapq
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import Redis, Workers, emit, wait_until  # noqa: E402

CHECKPOINTS, TASKS_EACH, WORKERS = 4, 64, 3


def fifo_loads(order: list[str], workers: int, load_s: float, render_s: float) -> tuple[int, float]:
    """Loads and makespan of a FIFO queue: the earliest free worker takes the next task."""
    free = [(0.0, w, None) for w in range(workers)]
    loads, end = 0, 0.0
    for ckpt in order:
        t, w, held = heapq.heappop(free)
        if held != ckpt:
            loads += 1
            t += load_s
        t += render_s
        end = max(end, t)
        heapq.heappush(free, (t, w, ckpt))
    return loads, end


def main() -> None:
    load_s = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    render_s = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05
    from farm.dispatch import submit
    from farm.ledger import Ledger
    from farm.spec import parse_spec
    from farm.store import open_store

    work = Path(tempfile.mkdtemp(prefix="farm-bench-loads-"))
    folder = work / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    names = [f"ckpt{i}" for i in range(CHECKPOINTS)]
    for name in names:
        (folder / f"{name}.safetensors").write_bytes(b"\0" * 16)
    # checkpoint innermost: spec order alternates checkpoints, the worst case for a FIFO queue
    spec = parse_spec(f"name: loads\nprompt: x\ncheckpoint: [{', '.join(names)}]\nsize: 64x64\nsteps: 2\n"
                      f"seed: 1-{TASKS_EACH}\ncombine: seed * checkpoint\n", models_dir=work / "models")
    order = [t.checkpoint for t in __import__("farm.expand", fromlist=["expand"]).expand(spec)]
    redis = Redis()
    workers = Workers(WORKERS, redis.url, work / "models", env={"FARM_STANDIN": f"{load_s},{render_s}",
                                                                "OMP_NUM_THREADS": "1"})
    try:
        workers.wait_ready()
        ledger = Ledger(redis.client)
        start = time.perf_counter()
        submit(spec, open_store(work / "out"), redis.url)
        wait_until(lambda: ledger.status(spec.job_id).done >= spec.task_count(), 900, "the job")
        elapsed = time.perf_counter() - start
        per_worker = {w: int(v["loads"]) for w, v in ledger.status(spec.job_id).workers.items()}
    finally:
        workers.stop()
        redis.stop()
    fifo, fifo_time = fifo_loads(order, WORKERS, load_s, render_s)
    emit("loads", {
        "checkpoints": CHECKPOINTS, "tasks": len(order), "workers": WORKERS,
        "load_seconds": load_s, "render_seconds": render_s,
        "affinity": {"loads": sum(per_worker.values()), "per_worker": per_worker, "seconds": round(elapsed, 1)},
        "fifo_simulated": {"loads": fifo, "seconds": round(fifo_time, 1)},
        "target_max_loads": CHECKPOINTS + WORKERS,
    })


if __name__ == "__main__":
    main()
