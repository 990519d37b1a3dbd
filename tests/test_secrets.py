"""The broker password never in `ps`, logs or the store: a real password-protected Redis, a real
worker given the password in its URL (scrubbed, with a warning), a job submitted with the password
from the environment, and a search for the password everywhere afterwards."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from farm.config import ConfigError, load_settings
from farm.credentials import hide_passwords, password_in, with_password
from tests.conftest import farm, free_port, wait_for_port


def test_passwords_in_urls_are_found_hidden_and_set():
    assert hide_passwords("--broker=redis://:s3cret@host:6379/0 x") == "--broker=redis://:***@host:6379/0 x"
    assert hide_passwords("rediss://worker:p%40ss@host/0") == "rediss://worker:***@host/0"
    assert hide_passwords("redis://host:6379/0") == "redis://host:6379/0"
    assert password_in("rediss://worker:p%40ss@host/0") == "p@ss"
    assert with_password("redis://host:6379/0", "p@ss:/") == "redis://:p%40ss%3A%2F@host:6379/0"
    assert with_password("rediss://worker:old@host/0", "new") == "rediss://worker:new@host/0"


def test_the_password_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    monkeypatch.delenv("FARM_BROKER_PASSWORD", raising=False)
    s = load_settings(None, broker_url="redis://h:1/0", broker_password_file=str(pw))
    assert s.broker_url == "redis://:from-file@h:1/0"
    monkeypatch.setenv("FARM_BROKER_PASSWORD", "from-env")
    assert load_settings(None, broker_url="redis://h:1/0").broker_url == "redis://:from-env@h:1/0"
    with pytest.raises(ConfigError, match="cannot read the broker password file"):
        load_settings(None, broker_password_file=str(tmp_path / "missing"))


@pytest.fixture
def locked_redis(redis_binary, tmp_path):
    password = "pw-" + secrets.token_hex(12)
    port = free_port()
    proc = subprocess.Popen([redis_binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path), "--requirepass", password],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc)
    yield port, password
    proc.terminate()
    proc.wait(10)


def test_the_password_is_nowhere_after_a_job(locked_redis, tiny_models, start_worker, tmp_path):
    port, password = locked_redis
    worker = start_worker(f"redis://:{password}@127.0.0.1:{port}/0", tiny_models, "alpha")
    worker.wait_ready()
    listing = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    mine = [line for line in listing.splitlines() if line.strip().startswith(str(worker.proc.pid))]
    assert mine and "redis://:***@127.0.0.1" in mine[0], listing  # Celery's title, from the scrubbed argv
    assert password not in listing
    assert password not in Path(f"/proc/{worker.proc.pid}/cmdline").read_bytes().decode(errors="replace")

    spec = tmp_path / "two.yaml"
    spec.write_text("checkpoint: seedfarm-tiny\nprompt: a robot\nsteps: 2\nwidth: 64\nheight: 64\n"
                    "sampler: Euler\nseed: 1-2\n")
    store = tmp_path / "renders"
    env_before = dict(os.environ)
    os.environ["FARM_BROKER_PASSWORD"] = password
    try:
        broker = f"redis://127.0.0.1:{port}/0"
        result = farm("submit", str(spec), "--broker", broker, "--store", str(store), "--models", str(tiny_models))
        assert result.returncode == 0, result.stderr
        job = result.stdout.strip()
        deadline = time.monotonic() + 120
        while "complete" not in farm("status", job, "--broker", broker).stdout:
            assert time.monotonic() < deadline, worker.text()
            time.sleep(1)
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    log = worker.text()
    assert "a password was given on the command line" in log and password not in log
    assert password not in result.stdout + result.stderr
    for path in store.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
    assert len(list((store / job / "images").glob("*.png"))) == 2
