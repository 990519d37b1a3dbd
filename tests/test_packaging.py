"""The wheel a user installs: built from this checkout, installed the normal way (not editable)
into a fresh venv, it carries the model configs, tokenizers, review page and demo, renders the
demo (`farm run`) and starts a worker against a real Redis.

To stay fast and offline, the fresh venv takes the third-party packages from the environment
running the tests (a path entry to a folder of links to its site-packages, seedfarm itself left
out), and pip resolves `seedfarm[worker]` against them with --no-index and the constraints file:
a dependency bound that the tested set does not satisfy fails the install. seedfarm's own code
comes only from the wheel; the test checks where `farm`, `worker` and the configs are loaded from.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO, RedisServer

PURELIB = Path(sysconfig.get_paths()["purelib"])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built as pip builds it for `pip install .` (isolated build, pyproject's backend)."""
    import fcntl

    out = tmp_path_factory.mktemp("wheel")
    # setuptools builds in the source tree (build/, *.egg-info): two test processes building at
    # once (pytest -n 4 may run this file's tests in two) would trip over each other
    with open(tmp_path_factory.getbasetemp().parent / "seedfarm-wheel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
                              capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"building the wheel failed:\n{done.stdout}\n{done.stderr}"
    (path,) = out.glob("seedfarm-*.whl")
    return path


def test_wheel_carries_every_config_file_the_review_page_and_the_demo(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = [p for p in (REPO / "configs").rglob("*") if p.is_file() and p.suffix != ".py"
               and "__pycache__" not in p.parts]
    assert len(configs) > 60
    missing = [str(p.relative_to(REPO)) for p in configs
               if f"worker/configs/{p.relative_to(REPO / 'configs').as_posix()}" not in names]
    assert not missing, f"configs/ files missing from the wheel: {missing}"
    for p in [*(REPO / "farm/review/static").iterdir(), REPO / "farm/data/demo.yaml"]:
        assert p.relative_to(REPO).as_posix() in names
    assert not [n for n in names if n.startswith(("tests/", "configs/"))]  # nothing at the top level but ours


def test_constraints_pin_every_dependency_within_its_bounds():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (REPO / "constraints/worker.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    for spec in project["dependencies"] + project["optional-dependencies"]["worker"]:
        req = Requirement(spec)
        assert req.specifier.prereleases is not True
        assert req.specifier, f"{spec}: no version bounds"
        assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), f"{spec}: no upper bound"
        name = canonicalize_name(req.name)
        assert name in pins, f"{spec} is not pinned in constraints/worker.txt (python scripts/lock_worker.py)"
        assert req.specifier.contains(pins[name]), f"constraints/worker.txt pins {name}=={pins[name]}, outside {spec}"


def fresh_venv(root: Path) -> Path:
    """A venv whose only seedfarm is the one pip installs next; the tested third-party packages
    reach it through a plain path entry (their .pth files and seedfarm's editable hook stay out)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
    deps = root / "deps"
    deps.mkdir()
    for entry in PURELIB.iterdir():
        n = entry.name.lower()
        if n.endswith(".pth") or n.startswith(("seedfarm", "__editable__", "farm", "worker", "_virtualenv")):
            continue
        (deps / entry.name).symlink_to(entry)
    (site,) = (root / "venv" / "lib").glob("python3*/site-packages")
    (site / "zz_tested_deps.pth").write_text(f"{deps}\n")
    return root / "venv" / "bin"


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "FARM_CONFIGS_DIR", "VIRTUAL_ENV", "FARM_CONFIG", "FARM_MODELS")}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_installed_wheel_renders_the_demo_and_starts_a_worker(wheel, tmp_path, redis_binary):
    bin_dir = fresh_venv(tmp_path)
    python = bin_dir / "python"
    env = clean_env()  # no PYTHONPATH: a checkout on it (and its seedfarm.egg-info) would count as installed
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "-q",
         "-c", str(REPO / "constraints/worker.txt"), f"seedfarm[worker] @ {wheel.as_uri()}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert install.returncode == 0, f"pip install of the wheel failed:\n{install.stdout}\n{install.stderr}"
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    where = subprocess.run(
        [str(python), "-c", "import farm, worker; from worker.pipelines import configs_dir; "
                            "print(farm.__file__); print(worker.__file__); print(configs_dir())"],
        capture_output=True, text=True, env=env, cwd=run_dir, timeout=120)
    assert where.returncode == 0, where.stderr
    site = str(tmp_path / "venv")
    for line in where.stdout.splitlines():
        assert line.startswith(site), f"loaded from outside the installed wheel: {line}"
    assert where.stdout.splitlines()[2].endswith(os.path.join("worker", "configs"))

    demo = subprocess.run([str(bin_dir / "farm"), "run"], capture_output=True, text=True, env=env, cwd=run_dir,
                          timeout=600)
    assert demo.returncode == 0, f"farm run failed:\n{demo.stdout}\n{demo.stderr}"
    (job,) = (run_dir / "outputs").iterdir()
    assert len(list((job / "images").glob("*.png"))) == 8
    assert list((job / "sheets").glob("*.png"))

    redis = RedisServer(redis_binary, tmp_path)
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        worker = subprocess.Popen(
            [str(bin_dir / "farm"), "worker", "--broker", redis.url, "--models", str(run_dir / "models"),
             "--name", "from-wheel"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=run_dir)
        try:
            deadline = time.monotonic() + 120
            while "ready." not in log_path.read_text():
                assert worker.poll() is None, f"farm worker exited:\n{log_path.read_text()}"
                assert time.monotonic() < deadline, f"farm worker not ready:\n{log_path.read_text()}"
                time.sleep(0.3)
            listed = subprocess.run([str(bin_dir / "farm"), "workers", "--broker", redis.url],
                                    capture_output=True, text=True, env=env, cwd=run_dir, timeout=60)
            assert listed.returncode == 0 and "from-wheel" in listed.stdout, listed.stdout + listed.stderr
        finally:
            worker.terminate()
            worker.wait(60)
            redis.stop()
