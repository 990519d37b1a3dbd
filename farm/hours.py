"""`--hours 01:00-08:00`: the hours a worker takes tasks in (worker/pause.py applies them; `farm
setup` checks them before writing a config). Torch-free, so both sides read it."""

from __future__ import annotations

import re
from datetime import datetime

_HOURS = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)-([01]?\d|2[0-3]|24):([0-5]\d)$")


class PauseConfigError(ValueError):
    pass


def parse_hours(text: str | None) -> tuple[tuple[int, int], ...]:
    """`01:00-08:00` or `22:00-07:30,12:00-13:00` -> ((start_minute, end_minute), ...); a window
    may wrap midnight. Empty: no schedule (always allowed)."""
    windows = []
    for part in (text or "").split(","):
        part = part.strip().replace(" ", "")
        if not part:
            continue
        m = _HOURS.match(part)
        if not m:
            raise PauseConfigError(f"--hours {text!r}: expected HH:MM-HH:MM[,HH:MM-HH:MM...], e.g. 01:00-08:00")
        h1, m1, h2, m2 = map(int, m.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start == end or end > 24 * 60:
            raise PauseConfigError(f"--hours {part}: a window needs two different times of day")
        windows.append((start, end))
    return tuple(windows)


def in_hours(windows: tuple[tuple[int, int], ...], now: datetime) -> bool:
    if not windows:
        return True
    minute = now.hour * 60 + now.minute
    for start, end in windows:
        if (start <= minute < end) if start < end else (minute >= start or minute < end):
            return True
    return False
