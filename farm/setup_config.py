"""`farm setup`: write a worker's config file (farm/config.py reads it), for installers such as
scripts/install-worker.ps1 and for people who prefer a file to flags. Checks what it can before
writing: the Redis URL's form, the models folder, the pause settings; never contacts Redis."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import yaml

from farm.config import FarmSettings
from farm.hours import PauseConfigError, parse_hours


class SetupError(ValueError):
    pass


def default_config_path() -> Path:
    """Where `farm` looks when no --config / FARM_CONFIG / ./farm.yaml is given (farm/config.py)."""
    return Path.home() / ".config" / "seedfarm" / "farm.yaml"


def worker_config(broker_url: str, models: str, worker_name: str | None = None, *, games: str | None = None,
                  pause_when_busy: bool = False, hours: str | None = None, user_idle: float = 0.0) -> dict:
    """The settings to write, checked; only what differs from the defaults."""
    url = urlparse(broker_url.strip())
    if url.scheme not in ("redis", "rediss") or not url.hostname:
        raise SetupError(f"Redis URL {broker_url!r}: expected redis://:PASSWORD@HOST:6379/0")
    roots = [r for r in models.split(os.pathsep) if r.strip()]
    if not roots:
        raise SetupError("models folder: give your A1111 or ComfyUI models folder")
    for root in roots:
        if not Path(root).is_dir():
            raise SetupError(f"models folder {root} does not exist")
    from_worker = {"pause_when_busy": pause_when_busy, "games": games or [], "hours": hours or None,
                   "user_idle": user_idle}
    values = {"broker_url": broker_url.strip(), "models": os.pathsep.join(str(Path(r).resolve()) for r in roots),
              "worker_name": worker_name or None, **from_worker}
    settings = FarmSettings(**values)  # the same validation the worker applies when it reads the file
    if settings.hours:
        try:
            parse_hours(settings.hours)
        except PauseConfigError as e:
            raise SetupError(str(e)) from None
    defaults = FarmSettings()
    return {k: v for k, v in settings.model_dump().items() if k in values and v != getattr(defaults, k)}


def write_config(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Written by `farm setup`; every key: docs/workers.md. Flags and FARM_* variables override it.\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    os.replace(tmp, path)
    return path
