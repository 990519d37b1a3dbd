"""Enqueue: expand a sweep and queue every task on Redis (the real `submit` path: job record to a
folder store, routes, kombu batch publishing). Reports tasks/s and the process's peak memory for
a small and a large sweep, each in a fresh process, to show memory stays flat in the task count.
Usage: python benchmarks/enqueue.py [TASKS]"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import Redis, emit  # noqa: E402


def one(broker: str, tasks: int) -> None:
    """Runs in a child process: prints tasks/s and peak RSS."""
    from farm.dispatch import submit
    from farm.spec import parse_spec
    from farm.store import open_store

    spec = parse_spec(f"name: enqueue{tasks}\nprompt: a cat\ncheckpoint: model\nsize: 512x512\n"
                      f"sampler: [Euler a, DPM++ 2M Karras]\ncfg: [5, 7]\nseed: 1-{tasks // 4}\n")
    start = time.perf_counter()
    count = submit(spec, open_store(tempfile.mkdtemp()), broker)
    elapsed = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tasks": count, "seconds": round(elapsed, 2), "tasks_per_s": round(count / elapsed),
                      "peak_rss_mb": round(peak_mb, 1)}))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        one(sys.argv[2], int(sys.argv[3]))
        return
    big = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    redis = Redis()
    try:
        runs = []
        for n in (big // 10, big):
            out = subprocess.run([sys.executable, __file__, "--child", redis.url, str(n)], capture_output=True,
                                 text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            redis.client.flushall()
    finally:
        redis.stop()
    emit("enqueue", {"runs": runs})


if __name__ == "__main__":
    main()
