"""Mixed cards: 3 real `farm worker` processes whose stand-in renderer (worker/standin.py) runs at
1x, 0.5x and 0.125x speed (a 4090, a 3060 and a 1070, roughly), jobs of 24, 64, 200 and 160
images submitted one after another to the same warm workers (about 4 minutes at the default 0.5 s
per image at 1x). Makespan = submit until the job's last image record; ideal = total work / sum of
speeds (images / (sum of 1/seconds per image)). Also: the share of the workers' render time spent
on images thrown away because the other copy was stored first (farm status' "discarded").

Usage: python benchmarks/mixed.py [SECONDS_PER_IMAGE_AT_1X] [worker args, e.g. --no-backups]"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import Redis, Workers, emit, wait_until  # noqa: E402

SPEEDS = (1.0, 0.5, 0.125)
JOBS = (24, 64, 200, 160)  # 160: a size at which the slow card's last group of 8 does not line up
WARMUP = 12  # a first job, so that every worker has measured its speed before the timed ones


def run_job(name: str, images: int, redis: Redis, work: Path) -> dict:
    from farm.dispatch import submit
    from farm.ledger import Ledger
    from farm.spec import parse_spec
    from farm.store import open_store
    from farm.store.records import load_records

    spec = parse_spec(f"name: {name}\nprompt: x\ncheckpoint: standin\nsize: 64x64\nsteps: 2\nseed: 1-{images}\n",
                      models_dir=work / "models")
    ledger = Ledger(redis.client)
    store = open_store(work / name)
    start = time.time()
    submit(spec, store, redis.url)
    wait_until(lambda: ledger.job_info(spec.job_id).get("status") == "complete", 600, f"job {name}", 0.25)
    # a copy that lost to its backup is counted when its render ends, after the job is complete
    wait_until(lambda: not any(w.get("busy") == "1" for w in ledger.workers()), 60, "the workers to be idle", 0.25)
    records = load_records(store, spec.job_id)
    end = max(datetime.fromisoformat(r["finished_at"]).timestamp() for r in records)
    st = ledger.status(spec.job_id)
    rendered = sum(w["seconds"] for w in st.workers.values())
    discarded = float(st.info.get("discarded_seconds", 0) or 0)
    per_worker = {}
    for r in records:
        per_worker[r["worker"]] = per_worker.get(r["worker"], 0) + 1
    return {"images": images, "records": len(records), "makespan": round(end - start, 2),
            "backups": int(st.info.get("backups", 0) or 0), "discarded": int(st.info.get("discarded", 0) or 0),
            "discarded_share": round(discarded / (rendered + discarded), 3) if rendered + discarded else 0.0,
            "images_by_worker": dict(sorted(per_worker.items()))}


def main() -> None:
    args = sys.argv[1:]
    seconds = float(args.pop(0)) if args and not args[0].startswith("-") else 0.5
    work = Path(tempfile.mkdtemp(prefix="farm-bench-mixed-"))
    (work / "models" / "Stable-diffusion").mkdir(parents=True)
    # the stand-in never reads the file; the worker only needs to find the checkpoint by name
    (work / "models" / "Stable-diffusion" / "standin.safetensors").write_bytes(b"\0" * 16)
    redis = Redis()
    envs = [{"FARM_STANDIN": f"0,{seconds / speed}"} for speed in SPEEDS]
    workers = Workers(len(SPEEDS), redis.url, work / "models", env={"OMP_NUM_THREADS": "1",
                                                                     "FARM_TRUSTED_STORES": str(work)}, envs=envs,
                      args=tuple(args))
    try:
        workers.wait_ready()
        run_job("warmup", WARMUP, redis, work)
        rows = []
        for images in JOBS:
            row = run_job(f"mixed{images}", images, redis, work)
            ideal = images / sum(speed / seconds for speed in SPEEDS)
            row.update(ideal=round(ideal, 2), of_ideal=round(ideal / row["makespan"], 3))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        workers.stop()
        redis.stop()
    emit("mixed", {"seconds_per_image_1x": seconds, "speeds": SPEEDS, "worker_args": args, "runs": rows})


if __name__ == "__main__":
    main()
