"""Shared test set-up: offline, a private hash cache, one tiny model per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Nothing may reach a model hub; the tiny models are built in code.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# One torch thread per process (set before torch loads, inherited by the `farm` processes the
# tests start): the suite runs several test processes on a 2-core machine, and OpenMP threads of
# several processes spinning on the same cores waste more CPU than they save.
os.environ["OMP_NUM_THREADS"] = "1"
# Credentials for the local S3 endpoint, in every process the tests start (workers too).
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")

REPO = Path(__file__).resolve().parent.parent
FARM_BIN = Path(sys.executable).parent / "farm"


# Files whose tests start servers, workers or `farm` processes: tens of seconds each. They run
# first, so that with several test processes (pytest-xdist, `make test`) the short tests fill the
# gaps at the end instead of one long test running alone.
SLOW_FILES = ("test_e2e_farm.py", "test_e2e_routing.py", "test_review.py", "test_diffusers_folders.py",
              "test_e2e_run.py", "test_info_roundtrip.py", "test_e2e_models.py", "test_spec_loras.py",
              "test_e2e_families.py", "test_packaging.py", "test_pause.py", "test_e2e_mixed.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in SLOW_FILES)  # stable: each file keeps its order


@pytest.fixture(scope="session", autouse=True)
def private_hash_cache(tmp_path_factory):
    os.environ["FARM_CACHE_DIR"] = str(tmp_path_factory.mktemp("farm-cache"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, private_hash_cache) -> Path:
    """A models folder in A1111 layout holding the built-in tiny checkpoint, and the input images
    the example specs use (inputs/), as `farm models make-tiny` writes them (with the tiny
    upscaler models, the tiny inpainting checkpoint and masks/ of jobs/inpaint.yaml, and the tiny
    SDXL base and refiner of jobs/refiner.yaml)."""
    from worker.tiny import make_tiny, make_tiny_inpaint, make_tiny_inputs, make_tiny_masks, write_example_models
    from worker.tiny_upscalers import write_tiny_upscalers

    models = tmp_path_factory.mktemp("models")
    make_tiny(models, "seedfarm-tiny")
    make_tiny_inputs(models)
    write_tiny_upscalers(models)
    make_tiny_inpaint(models)
    make_tiny_masks(models)
    write_example_models(models)
    return models


@pytest.fixture(scope="session")
def family_models(tmp_path_factory, private_hash_cache):
    """family key -> (models folder, paths) of its tiny models (tests/family_models.py), written
    once a session for tests/test_families_shared.py and the test_family_*.py files alike."""
    from family_models import FamilyModels

    return FamilyModels(tmp_path_factory)


def farm(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `farm` console command (the one pip installed) in a subprocess."""
    return subprocess.run(
        [str(FARM_BIN), *args],
        cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ},
    )


# --- real servers for the farm tests: Redis, an S3 endpoint, worker processes -----------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def debian_binary(binary: str) -> str:
    """A binary from Debian's packages, installed when missing (tests run as root on a fresh CI
    machine). Fails loudly rather than skipping."""
    import shutil

    path = shutil.which(binary)
    if path:
        return path
    subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", binary], check=True, capture_output=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    path = shutil.which(binary)
    assert path, f"{binary} could not be installed"
    return path


def ensure_redis_server() -> str:
    return debian_binary("redis-server")


class RedisServer:
    def __init__(self, binary: str, workdir: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.proc)

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, decode_responses=True)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="session")
def redis_binary() -> str:
    return ensure_redis_server()


@pytest.fixture
def redis_server(redis_binary, tmp_path):
    server = RedisServer(redis_binary, tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """moto's standalone S3 server on 127.0.0.1, reached only through boto3 with endpoint_url."""
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


class WorkerProcess:
    """A real `farm worker` process, its log in a file."""

    def __init__(self, broker: str, models: Path, name: str, log_dir: Path, env: dict | None = None,
                 args: tuple[str, ...] = ()):
        self.name = name
        self.log_path = log_dir / f"worker-{name}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(FARM_BIN), "worker", "--broker", broker, "--models", str(models), "--name", name, *args],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )

    def text(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 90) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.text() or " ready." in self.text():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited:\n{self.text()}")
            time.sleep(0.2)
        raise RuntimeError(f"worker {self.name} not ready after {timeout} s:\n{self.text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


# Short timeouts for tests only; the defaults (farm/config.py) are for real renders. One torch
# thread per worker: two CPU workers with two threads each on two cores thrash each other.
TEST_WORKER_ENV = {"FARM_VISIBILITY_TIMEOUT": "8", "FARM_RESTORE_INTERVAL": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def start_worker(tmp_path):
    """A worker trusts only stores under the test's tmp_path (farm/guard.py), plus `trusted`."""
    started: list[WorkerProcess] = []

    def start(broker: str, models: Path, name: str, env: dict | None = None, args: tuple[str, ...] = (),
              trusted: tuple[str, ...] = ()) -> WorkerProcess:
        trust = {"FARM_TRUSTED_STORES": ",".join([str(tmp_path), *trusted])}
        w = WorkerProcess(broker, models, name, tmp_path, {**TEST_WORKER_ENV, **trust, **(env or {})}, args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


# --- a real browser for the review page: Debian's chromium, driven by Playwright -------------

CHROMIUM_FLAGS = [  # the network is closed: without these chromium waits on connections
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def ensure_chromium() -> str:
    """Debian's chromium (never a Playwright browser download)."""
    return debian_binary("chromium")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless chromium per test module, with a fresh profile (Playwright's persistent
    context is how it takes a --user-data-dir); tests open pages in it."""
    from playwright.sync_api import sync_playwright

    binary = ensure_chromium()
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=binary, headless=True, args=CHROMIUM_FLAGS, accept_downloads=True,
            viewport={"width": 1280, "height": 900},
        )
        yield context
        context.close()


@pytest.fixture
def web(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/web (HEAD and GET): the internet of these tests."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    root = tmp_path / "web"
    root.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
