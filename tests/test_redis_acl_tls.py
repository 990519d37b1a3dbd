"""Redis over TLS with the ACL users `farm redis-acl` prints: certificates made in the test by the
shipped script (configs/redis/make-certs.sh), a real TLS-only redis-server, a worker, a submitter
and a viewer each with its own user; the job completes with an empty ACL LOG, and a missing
permission is one line naming it."""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, debian_binary, farm, free_port, wait_for_port


@pytest.fixture
def tls_redis(redis_binary, tmp_path):
    """A TLS-only Redis (port 0, tls-port) with the farm's three ACL users."""
    debian_binary("openssl")
    certs = tmp_path / "certs"
    subprocess.run(["sh", str(REPO / "configs" / "redis" / "make-certs.sh"), str(certs), "127.0.0.1", "localhost"],
                   check=True, capture_output=True)
    port = free_port()
    admin = "admin-" + secrets.token_hex(8)
    proc = subprocess.Popen(
        [redis_binary, "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port), "--save", "", "--appendonly",
         "no", "--dir", str(tmp_path), "--tls-cert-file", str(certs / "server.pem"), "--tls-key-file",
         str(certs / "server.key"), "--tls-ca-cert-file", str(certs / "ca.pem"), "--tls-auth-clients", "no",
         "--requirepass", admin],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc)
    tls = f"ssl_cert_reqs=required&ssl_ca_certs={certs / 'ca.pem'}"
    import redis

    r = redis.Redis.from_url(f"rediss://:{admin}@127.0.0.1:{port}/0?{tls}", decode_responses=True)
    passwords = {}
    printed = farm("redis-acl").stdout.splitlines()
    for line in printed:
        if line.startswith("user "):
            _, user, *rules = line.split()
            passwords[user] = secrets.token_hex(16)
            r.execute_command("ACL", "SETUSER", user, *[f">{passwords[user]}" if x.startswith(">") else x for x in rules])
    assert set(passwords) == {"farm-worker", "farm-submitter", "farm-viewer"}

    def url(user: str) -> str:
        return f"rediss://{user}:{passwords[user]}@127.0.0.1:{port}/0?{tls}"

    yield url, r, f"rediss://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


def test_a_job_over_tls_with_one_acl_user_per_role(tls_redis, tiny_models, start_worker, tmp_path):
    url, admin, plain = tls_redis
    # without the CA the client refuses the server: one line
    refused = farm("jobs", "--broker", plain + "?ssl_cert_reqs=required")
    assert refused.returncode == 1 and "certificate verify failed" in refused.stderr
    assert refused.stderr.count("\n") == 1
    admin.execute_command("ACL", "LOG", "RESET")
    worker = start_worker(url("farm-worker"), tiny_models, "alpha")
    worker.wait_ready()
    spec = tmp_path / "two.yaml"
    spec.write_text("checkpoint: seedfarm-tiny\nprompt: a robot\nsteps: 2\nwidth: 64\nheight: 64\n"
                    "sampler: Euler\nseed: 1-2\n")
    store = tmp_path / "renders"
    result = farm("submit", str(spec), "--broker", url("farm-submitter"), "--store", str(store),
                  "--models", str(tiny_models))
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    deadline = time.monotonic() + 120
    while "complete" not in (shown := farm("status", job, "--broker", url("farm-viewer"))).stdout:
        assert shown.returncode == 0, shown.stderr
        assert time.monotonic() < deadline, worker.text()
        time.sleep(1)
    assert len(list(Path(store, job, "images").glob("*.png"))) == 2
    assert farm("workers", "--broker", url("farm-viewer")).returncode == 0
    assert admin.execute_command("ACL", "LOG") == [], "a role lacks a permission the farm uses: " + str(admin.execute_command("ACL", "LOG"))
    # a viewer may not cancel: one line naming what is missing, exit 1
    denied = farm("cancel", job, "--broker", url("farm-viewer"))
    errors = [line for line in denied.stderr.splitlines() if not line.startswith("warning: a password")]
    assert denied.returncode == 1 and len(errors) == 1, denied.stderr  # (the URL held the password)
    assert "Redis refused" in denied.stderr and "no permissions to run the 'hset' command" in denied.stderr


def test_a_worker_that_stops_on_an_error_exits_non_zero(tls_redis, tiny_models, start_worker):
    """Here the error is a worker started with the viewer's user: Celery stops on the refused
    command; the process must exit non-zero so that a supervisor restarts it (it exited 0)."""
    url, _, _ = tls_redis
    worker = start_worker(url("farm-viewer"), tiny_models, "wrong-user")
    assert worker.proc.wait(120) != 0
    assert "no permissions" in worker.text()
