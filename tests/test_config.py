"""Settings precedence: flags > FARM_* environment variables > config file > defaults."""

from __future__ import annotations

import pytest

from conftest import farm
from farm.config import ENV_VARS, ConfigError, load_settings


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for env in ENV_VARS.values():
        monkeypatch.delenv(env, raising=False)
    monkeypatch.delenv("FARM_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./farm.yaml
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/seedfarm/farm.yaml
    return monkeypatch


def test_flags_beat_env_beat_file_beat_defaults(clean_env, tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("broker_url: redis://file:6379/0\nstore: /from/file\nmodels: /models/file\n"
                      "visibility_timeout: 900\n")
    assert load_settings().store == "outputs"  # defaults while no file is found
    assert load_settings(str(config)).visibility_timeout == 900
    clean_env.setenv("FARM_STORE", "/from/env")
    clean_env.setenv("FARM_VISIBILITY_TIMEOUT", "30")
    s = load_settings(str(config), store=None, broker_url="redis://flag:6379/0")
    assert s.broker_url == "redis://flag:6379/0"  # flag
    assert s.store == "/from/env"  # env over file
    assert s.models == "/models/file"  # file over default
    assert s.visibility_timeout == 30.0


def test_config_file_found_by_env_and_in_the_working_folder(clean_env, tmp_path):
    (tmp_path / "farm.yaml").write_text("store: /here\n")
    assert load_settings().store == "/here"
    other = tmp_path / "other.yaml"
    other.write_text("store: /there\n")
    clean_env.setenv("FARM_CONFIG", str(other))
    assert load_settings().store == "/there"


def test_bad_config_is_one_clear_error(clean_env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("brokr_url: redis://x\n")
    with pytest.raises(ConfigError, match="brokr_url"):
        load_settings(str(bad))
    result = farm("--config", str(bad), "jobs")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "brokr_url" in result.stderr
