"""Farm settings: command-line flags, then FARM_* environment variables, then a YAML config file,
then the defaults. The first that gives a value wins.

The config file is `--config FILE`, else $FARM_CONFIG, else ./farm.yaml, else
~/.config/seedfarm/farm.yaml (see configs/farm.example.yaml).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from farm.tunables import DEFAULT_RESTORE_INTERVAL, DEFAULT_VISIBILITY_TIMEOUT, MAX_MESSAGE_BYTES


class FarmSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    broker_url: str = "redis://127.0.0.1:6379/0"
    # The broker password, kept out of the URL (farm/credentials.py): a file holding it, or the
    # value itself (env FARM_BROKER_PASSWORD or this file, never a flag: flags show in `ps`).
    broker_password_file: str | None = None
    broker_password: str | None = None
    store: str = "outputs"
    models: str = "models"
    worker_name: str | None = None
    visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT  # why that value: farm/tunables.py
    # How often every worker looks for tasks of dead workers to hand back (kombu >= 5.7).
    restore_interval: float = DEFAULT_RESTORE_INTERVAL
    # Worker memory profile and model safety (worker/memory.py, docs/models.md).
    vram: str = "auto"
    precision: str = "auto"
    attention: str = "sdpa"
    no_half_vae: bool = False
    allow_pickle: bool = False
    # Stepping aside while the PC's owner uses it (worker/pause.py, docs/workers.md).
    pause_when_busy: bool = False  # another process on the worker's GPU
    games: list[str] = []  # executables whose running pauses the worker (a list, or "a.exe,b.exe")
    hours: str | None = None  # render only in these hours, e.g. "01:00-08:00"
    user_idle: float = 0.0  # render only after this many seconds without keyboard/mouse (Windows)
    resume_after: float = 60.0  # seconds the GPU, the games and the user must stay away first
    yield_now: bool = False  # on pause, hand the running task back after its diffusion batch
    # What a worker accepts from its queues (farm/guard.py, docs/security.md): the stores it may
    # write into besides its own `store` (a queued job names its store), and the largest message.
    trusted_stores: list[str] = []
    max_message_bytes: int = Field(default=MAX_MESSAGE_BYTES, ge=1024)

    @field_validator("games", mode="before")
    @classmethod
    def _split_games(cls, value: Any) -> Any:
        return [g.strip() for g in value.split(",") if g.strip()] if isinstance(value, str) else value


ENV_VARS = {
    "broker_url": "FARM_BROKER_URL",
    "broker_password_file": "FARM_BROKER_PASSWORD_FILE",
    "broker_password": "FARM_BROKER_PASSWORD",
    "store": "FARM_STORE",
    "models": "FARM_MODELS",
    "worker_name": "FARM_WORKER_NAME",
    "visibility_timeout": "FARM_VISIBILITY_TIMEOUT",
    "restore_interval": "FARM_RESTORE_INTERVAL",
    "vram": "FARM_VRAM",
    "precision": "FARM_PRECISION",
    "attention": "FARM_ATTENTION",
    "no_half_vae": "FARM_NO_HALF_VAE",
    "allow_pickle": "FARM_ALLOW_PICKLE",
    "pause_when_busy": "FARM_PAUSE_WHEN_BUSY",
    "games": "FARM_GAMES",
    "hours": "FARM_HOURS",
    "user_idle": "FARM_USER_IDLE",
    "resume_after": "FARM_RESUME_AFTER",
    "yield_now": "FARM_YIELD_NOW",
    "trusted_stores": "FARM_TRUSTED_STORES",  # comma-separated
    "max_message_bytes": "FARM_MAX_MESSAGE_BYTES",
}
LIST_SETTINGS = {"trusted_stores"}


class ConfigError(Exception):
    pass


def config_file(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get("FARM_CONFIG"):
        return Path(os.environ["FARM_CONFIG"])
    for candidate in (Path("farm.yaml"), Path.home() / ".config" / "seedfarm" / "farm.yaml"):
        if candidate.is_file():
            return candidate
    return None


def load_settings(config: str | None = None, **flags: Any) -> FarmSettings:
    """Settings from flags (None = not given), env, config file and defaults, in that order."""
    values: dict[str, Any] = {}
    path = config_file(config)
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
        values.update(loaded)
    for key, env in ENV_VARS.items():
        if os.environ.get(env):
            value = os.environ[env]
            values[key] = [v.strip() for v in value.split(",") if v.strip()] if key in LIST_SETTINGS else value
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        settings = FarmSettings(**values)
    except ValidationError as e:
        err = e.errors()[0]
        where = f"config {path}" if path else "settings"
        raise ConfigError(f"{where}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    return with_broker_password(settings)


def with_broker_password(settings: FarmSettings) -> FarmSettings:
    """The settings with the broker password (from its file, or given alone) put into the URL
    that the clients use; the URL is never printed whole (farm/ledger.py safe_url)."""
    from farm.credentials import read_password_file, with_password

    try:
        password = (read_password_file(settings.broker_password_file) if settings.broker_password_file
                    else settings.broker_password)
        if password:
            return settings.model_copy(update={"broker_url": with_password(settings.broker_url, password)})
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return settings
