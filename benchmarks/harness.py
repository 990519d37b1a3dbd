"""Shared pieces of the benchmarks: a redis-server on a free 127.0.0.1 port, `farm worker`
processes, a JSON result line. Benchmarks print one JSON object each on stdout."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

FARM = Path(sys.executable).parent / "farm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


class Redis:
    """A redis-server on 127.0.0.1 and a free port. `aof`: with an append-only file (fsync always),
    so a restart (`stop(keep=True)`, `start()`) keeps the data; without, a restart empties it."""

    def __init__(self, aof: bool = False):
        self.binary = shutil.which("redis-server")
        if not self.binary:
            sys.exit("benchmarks need redis-server (Debian: apt-get install redis-server)")
        self.dir = tempfile.mkdtemp(prefix="farm-bench-redis-")
        self.aof, self.port = aof, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else ["--appendonly", "no"]
        self.proc = subprocess.Popen([self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                      *aof, "--dir", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        self.client = redis.Redis(port=self.port, decode_responses=True)
        wait_until(self._ping, 20, "redis-server", 0.05)

    def _ping(self) -> bool:
        try:
            return self.client.ping()
        except Exception:
            return False

    def stop(self, keep: bool = False) -> None:
        """Stop the server; its folder (and AOF) is removed unless `keep` (to start it again)."""
        self.proc.terminate()
        self.proc.wait(10)
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


class Workers:
    """N real `farm worker` processes; waits until each is consuming. `envs`: one more environment
    per worker (e.g. a stand-in speed each)."""

    def __init__(self, n: int, broker: str, models: Path, env: dict | None = None, log_dir: Path | None = None,
                 args: tuple[str, ...] = (), envs: list[dict] | None = None):
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="farm-bench-workers-"))
        self.procs = []
        for i in range(n):
            log = open(self.log_dir / f"w{i}.log", "w")
            proc = subprocess.Popen([str(FARM), "worker", "--broker", broker, "--models", str(models),
                                     "--name", f"w{i}", *args],
                                    stdout=log, stderr=subprocess.STDOUT,
                                    # the benchmarks' stores sit beside `models` in one work folder:
                                    # trusted, as a worker trusts only the stores its owner names
                                    env={**os.environ, "HF_HUB_OFFLINE": "1",
                                         "FARM_TRUSTED_STORES": str(Path(models).parent), **(env or {}),
                                         **(envs[i] if envs else {})})
            self.procs.append((proc, log))

    def wait_ready(self, timeout: float = 300) -> None:
        logs = [self.log_dir / f"w{i}.log" for i in range(len(self.procs))]
        wait_until(lambda: all(" ready." in p.read_text() for p in logs), timeout, "the workers", interval=0.2)

    def stop(self) -> None:
        for proc, _ in self.procs:
            proc.terminate()
        for proc, log in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def machine() -> dict:
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "diffusers", "transformers", "celery", "kombu"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), **versions,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}


def emit(name: str, result: dict) -> None:
    print(json.dumps({"benchmark": name, **result, "machine": machine()}), flush=True)


def timed(fn, repeat: int) -> float:
    """Seconds per call of fn, after one warm-up call (and compilation); the GPU synchronised."""
    import torch

    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat
