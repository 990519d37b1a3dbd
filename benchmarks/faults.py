"""The fault suite: real `farm worker` processes (stand-in renderer, worker/standin.py), a real
redis-server, a folder store and an S3 endpoint (moto's server behind tests/tcp_proxy.py, which
plays its outage), and the faults a farm of home PCs meets. For each scenario:
images expected / stored / duplicated (two records of one image), renders repeated (work done
twice), seconds against the undisturbed run, whether the job finished without a human, and what
`farm status` showed at the end. Prints one JSON object (docs/RELIABILITY.md has the figures).

Usage: python benchmarks/faults.py [IMAGES] [SECONDS_PER_IMAGE] [KILLS] [STOP_SECONDS] [ONLY,SCENARIOS]
                                   [S3_DOWN_SECONDS]
(defaults 48 0.4 6 20 all 30: the issue's 64 images, 10 kills and a 2-minute SIGSTOP scaled down to
fit a 2-core machine; the worker timeouts are the tests' short ones, see TEST_ENV).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from harness import FARM, Redis, emit, free_port, wait_until  # noqa: E402
from tcp_proxy import TcpProxy  # noqa: E402

# Short timeouts, as in the tests: a task of a dead worker is back on the queue after ~8 s.
TEST_ENV = {"FARM_VISIBILITY_TIMEOUT": "8", "FARM_RESTORE_INTERVAL": "1", "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}


class S3:
    """moto's S3 server on 127.0.0.1 with a bucket, reached through a proxy that can go down."""

    def __init__(self):
        port = free_port()
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                                      "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.environ.update({k: v for k, v in TEST_ENV.items() if k.startswith("AWS_")})
        import boto3

        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        wait_until(lambda: self._create(client), 30, "moto's server", 0.1)
        self.proxy = TcpProxy(port)
        self.url = f"s3://farm-faults/renders?endpoint_url=http://127.0.0.1:{self.proxy.port}"

    @staticmethod
    def _create(client) -> bool:
        try:
            client.create_bucket(Bucket="farm-faults")
            return True
        except Exception:  # not listening yet
            return False

    def stop(self) -> None:
        self.proxy.close()
        self.proc.terminate()
        self.proc.wait(10)


class Farm:
    """N workers, each restartable."""

    def __init__(self, n: int, redis: Redis, work: Path, seconds: float, trusted: tuple[str, ...] = ()):
        self.redis, self.work, self.env = redis, work, {
            **os.environ, **TEST_ENV, "FARM_STANDIN": f"0,{seconds}",
            "FARM_TRUSTED_STORES": ",".join([str(work), *trusted])}
        self.procs: list[subprocess.Popen | None] = [None] * n
        self.offsets = [0] * n  # where each worker's current process starts in its log
        self.logs = [open(work / f"w{i}.log", "a") for i in range(n)]
        for i in range(n):
            self.start(i)

    def start(self, i: int) -> None:
        self.logs[i].flush()
        self.offsets[i] = (self.work / f"w{i}.log").stat().st_size
        self.procs[i] = subprocess.Popen(
            [str(FARM), "worker", "--broker", self.redis.url, "--models", str(self.work / "models"), "--name", f"w{i}"],
            stdout=self.logs[i], stderr=subprocess.STDOUT, env=self.env)

    def ready(self, i: int) -> bool:
        with open(self.work / f"w{i}.log", "rb") as f:
            f.seek(self.offsets[i])
            return b" ready." in f.read()

    def wait_ready(self) -> None:
        """Until every worker's current process has said ' ready.'."""
        for j in range(len(self.procs)):
            wait_until(lambda j=j: self.ready(j), 300, f"worker w{j}", 0.2)

    def signal(self, i: int, sig: int) -> None:
        self.procs[i].send_signal(sig)

    def kill_and_restart(self, i: int) -> None:
        self.procs[i].kill()
        self.procs[i].wait(10)
        self.start(i)

    def stop(self) -> None:
        for p in self.procs:
            if p and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def farm_cmd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(FARM), *args], capture_output=True, text=True, timeout=120)


def outcome(store_url: str, job: str, images: int) -> dict:
    """What the store (a folder or a bucket) holds: every image once, one record each."""
    from farm.store import open_store

    store = open_store(store_url)
    pngs = [k for k in store.list_keys(f"{job}/images/") if k.endswith(".png")]
    records = [json.loads(store.read_bytes(k)) for k in store.list_keys(f"{job}/records/") if k.endswith(".json")]
    keys = [(r["task_id"], r["seed"]) for r in records]
    manifest = store.read_text(f"{job}/manifest.jsonl").splitlines() if store.exists(f"{job}/manifest.jsonl") else []
    folder = Path(store_url) / job  # a bucket has no temp objects (a PUT is whole)
    temps = [p for p in folder.rglob("*") if p.is_file() and ".tmp" in p.name] if "://" not in store_url else []
    return {"expected": images, "stored": len(pngs), "lost": images - len(set(keys)),
            "duplicated": len(keys) - len(set(keys)), "manifest_lines": len(manifest), "temp_files_left": len(temps)}


def run_scenario(name: str, redis: Redis, farm: Farm, store: str, images: int, seconds: float, fault) -> dict:
    from farm.ledger import Ledger

    spec = farm.work / f"{name}.yaml"
    spec.write_text(f"name: {name}\nprompt: x\ncheckpoint: standin\nsize: 64x64\nsteps: 2\nsampler: Euler\n"
                    f"seed: 1-{images}\n")
    started = time.perf_counter()
    result = farm_cmd("submit", str(spec), "--broker", redis.url, "--store", store,
                      "--models", str(spec.parent / "models"))
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    fault_done = threading.Event()
    ended: dict = {}

    def finished():  # complete; or finished with failures once the fault (and any resume) is over
        try:
            status = Ledger(redis.client).job_info(job).get("status", "")
        except Exception:  # Redis down for the moment
            return False
        return status if status == "complete" or (fault_done.is_set() and status.startswith("finished")) else False

    def watch():  # the job's end, timed while the fault is still being played
        try:
            ended["status"] = wait_until(finished, 900, f"job {name}", 0.1)
        except TimeoutError:
            ended["status"] = "timed out"
        ended["at"] = time.perf_counter()

    watcher = threading.Thread(target=watch)
    watcher.start()
    notes = fault(job) or {}
    fault_done.set()
    watcher.join()
    human = notes.pop("human", False)
    status = ended["status"]
    elapsed = ended["at"] - started
    workers = Ledger(redis.client).status(job)
    rendered = sum(int(w["images"]) for w in workers.workers.values()) if workers else None
    shown = farm_cmd("status", job, "--broker", redis.url).stdout.splitlines()
    return {"scenario": name, **outcome(store, job, images), "status": status, "seconds": round(elapsed, 1),
            "renders": rendered, "human_action": human or None, "farm_status_first_line": shown[0] if shown else "",
            **notes}


def main() -> None:
    images = int(sys.argv[1]) if len(sys.argv) > 1 else 48
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 0.4
    kills = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    stop_seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 20
    only = set(sys.argv[5].split(",")) if len(sys.argv) > 5 and sys.argv[5] != "all" else None  # e.g. kill9,sigstop
    s3_down = float(sys.argv[6]) if len(sys.argv) > 6 else 30  # (baseline always runs)
    work = Path(tempfile.mkdtemp(prefix="farm-faults-"))
    (work / "models" / "Stable-diffusion").mkdir(parents=True)
    (work / "models" / "Stable-diffusion" / "standin.safetensors").write_bytes(b"\0" * 16)
    store = work / "store"
    rng = random.Random(14)
    redis = Redis(aof=True)
    s3 = S3()
    farm = Farm(3, redis, work, seconds, trusted=(s3.url,))
    farm.wait_ready()
    rows = []

    def after(first_images: int = 3):
        from farm.ledger import Ledger

        def started(job):
            st = Ledger(redis.client).status(job)
            return st is not None and st.done >= first_images
        return started

    def none(job):
        return {}

    def kill9(job):
        ready = after()
        wait_until(lambda: ready(job), 120, "first images", 0.1)
        victims = []

        for _ in range(kills):  # each kill hits a worker that is up (a restarted one takes a while)
            up = wait_until(lambda: [i for i in range(3) if farm.ready(i)], 300, "a live worker", 0.1)
            i = rng.choice(up)
            victims.append(f"w{i}")
            farm.kill_and_restart(i)
            time.sleep(1.0)
        return {"kills": victims}

    def sigstop(job):
        wait_until(lambda: after()(job), 120, "first images", 0.1)
        farm.signal(0, signal.SIGSTOP)
        time.sleep(stop_seconds)
        farm.signal(0, signal.SIGCONT)
        return {"stopped_seconds": stop_seconds}

    def redis_restart(job):
        wait_until(lambda: after()(job), 120, "first images", 0.1)
        redis.stop(keep=True)
        time.sleep(2)
        redis.start()
        return {"redis_down_seconds": 2}

    def redis_lost(job):
        wait_until(lambda: after()(job), 120, "first images", 0.1)
        redis.stop()  # and its folder: it starts empty, as a Redis without persistence does
        Path(redis.dir).mkdir()
        redis.aof = False
        redis.start()
        time.sleep(3)  # the user notices, then:
        result = farm_cmd("resume", job, "--broker", redis.url, "--store", str(store))
        return {"human": f"farm resume: {result.stdout.strip() or result.stderr.strip()}"}

    full = work / "full"  # a store on a 400 kB tmpfs (root only): fills up mid-job

    def disk_full(job):
        from farm.ledger import Ledger

        started = time.perf_counter()
        seen = wait_until(lambda: (Ledger(redis.client).job_info(job).get("status", "") or "").startswith("finished")
                          and Ledger(redis.client).job_info(job)["status"], 600, "the job to end", 0.2)
        ended = round(time.perf_counter() - started, 1)
        reason = Ledger(redis.client).job_info(job).get("reason", "")
        subprocess.run(["mount", "-o", "remount,size=20M", str(full)], check=True)  # the user frees space
        result = farm_cmd("resume", job, "--broker", redis.url, "--store", str(full))
        return {"human": f"freed space, then farm resume: {result.stdout.strip() or result.stderr.strip()}",
                "seen_before_resume": f"{seen} after {ended} s" + (f" ({reason[:80]})" if reason else "")}

    def s3_outage(job):  # the bucket's endpoint refuses connections, open ones are cut
        wait_until(lambda: after()(job), 120, "first images", 0.1)
        s3.proxy.down()
        time.sleep(s3_down - 2)
        seen = farm_cmd("status", job, "--broker", redis.url).stdout.splitlines()
        time.sleep(2)
        s3.proxy.up()
        return {"s3_down_seconds": s3_down, "seen_during_outage": seen[0] if seen else ""}

    def rogue(job):
        from farm.ledger import Ledger

        wait_until(lambda: after()(job), 120, "first images", 0.1)
        queue = next(iter(Ledger(redis.client).routes()))
        for raw in (b"not json {{{", b"[1,2,3]", b'{"foo":1}', b"x" * 2_000_000):
            redis.client.lpush(queue, raw)
        return {"rogue_messages": 4}

    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(full)]).returncode == 0
    try:
        for name, fault in (("baseline", none), ("kill9", kill9), ("sigstop", sigstop),
                            ("redis-restart-aof", redis_restart), ("rogue-messages", rogue),
                            ("disk-full-resume", disk_full), ("redis-lost-resume", redis_lost),
                            ("s3-baseline", none), ("s3-outage", s3_outage)):
            if only and name != "baseline" and name not in only or name.startswith("disk") and not mounted:
                continue
            where = full if name.startswith("disk") else s3.url if name.startswith("s3") else store
            row = run_scenario(name, redis, farm, str(where), images, seconds, fault)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            for i, p in enumerate(farm.procs):  # a worker that died on its own would show here
                if p.poll() is not None:
                    farm.start(i)
            farm.wait_ready()
    finally:
        farm.stop()
        redis.stop()
        s3.stop()
        if mounted:
            subprocess.run(["umount", str(full)])
    base = {row["scenario"]: row["seconds"] for row in rows}
    for row in rows:  # a bucket's scenario against the undisturbed bucket
        undisturbed = base.get("s3-baseline") if row["scenario"].startswith("s3") else None
        row["time_vs_baseline"] = round(row["seconds"] / (undisturbed or base["baseline"]), 2)
    emit("faults", {"images": images, "seconds_per_image": seconds, "workers": 3, "kills": kills,
                    "sigstop_seconds": stop_seconds, "s3_down_seconds": s3_down, "scenarios": rows})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
