"""`farm setup`, the part of scripts/install-worker.ps1 that runs on Linux too: the config it
writes is the one a bare `farm worker` reads, and a bad answer is refused in one line."""

from __future__ import annotations

import re

import yaml

from conftest import REPO, farm
from farm.config import load_settings
from worker.pause import PausePolicy


def test_setup_writes_the_config_a_bare_farm_worker_reads(tmp_path):
    models = tmp_path / "A1111 models"
    models.mkdir()
    path = tmp_path / "cfg" / "farm.yaml"
    result = farm("setup", "--broker", "redis://:s3cret@192.168.1.10:6379/0", "--models", str(models),
                  "--name", "GAMING-PC", "--pause-when-busy", "--games", "eldenring.exe, cs2.exe", "--path", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(path)
    assert yaml.safe_load(path.read_text()) == {
        "broker_url": "redis://:s3cret@192.168.1.10:6379/0", "models": str(models), "worker_name": "GAMING-PC",
        "pause_when_busy": True, "games": ["eldenring.exe", "cs2.exe"]}
    settings = load_settings(str(path))
    assert settings.broker_url.endswith("@192.168.1.10:6379/0") and settings.models == str(models)
    policy = PausePolicy.from_settings(settings)
    assert policy.when_busy and policy.games == ("eldenring.exe", "cs2.exe")


def test_setup_refuses_bad_answers_in_one_line(tmp_path):
    cases = [
        (("--broker", "192.168.1.10:6379", "--models", str(tmp_path)), "expected redis://:PASSWORD@HOST:6379/0"),
        (("--broker", "redis://h:6379/0", "--models", str(tmp_path / "nope")), "does not exist"),
        (("--broker", "redis://h:6379/0", "--models", str(tmp_path), "--hours", "8-9"), "--hours"),
    ]
    for args, message in cases:
        result = farm("setup", *args, "--path", str(tmp_path / "farm.yaml"))
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert message in result.stderr
    assert not (tmp_path / "farm.yaml").exists()


def test_the_install_script_passes_farm_setup_only_options_it_has():
    script = (REPO / "scripts" / "install-worker.ps1").read_text()
    used = set(re.findall(r'"(--[a-z-]+)"', script))
    assert {"--broker", "--models", "--name", "--pause-when-busy", "--games"} <= used
    from farm.cli import setup

    known = {opt for p in setup.params for opt in p.opts}
    assert used - {"--python", "--torch-backend", "--force"} <= known
    assert "constraints\\worker.txt" in script and "Register-ScheduledTask" in script
    assert "--no-deps" in script and "constraints\\no-deps.txt" in script  # spandrel without torchvision
