"""Stepping aside while the PC's owner uses it: when a worker takes no new task, and why.

A worker is paused, for the first reason that holds, when:
  1. someone ran `farm worker pause NAME` (a key in Redis, until `farm worker resume NAME`);
  2. the clock is outside its `--hours` (e.g. `01:00-08:00`, or `22:00-07:30,12:00-13:00`);
  3. one of its `--games` executables runs (any process of that name on this PC);
  4. `--pause-when-busy`: another process uses its GPU (NVML's compute and graphics process
     lists; the desktop's own processes, IGNORED_GPU_PROCESSES, do not count);
  5. `--user-idle N`: someone touched the keyboard or mouse in the last N seconds (Windows; the
     desktop's idle time is not read elsewhere, and the check is then off, said once in the log).
Reasons 3-5 end only after they have been clear for `--resume-after` seconds, so that a game's
loading screen or a quick alt-tab does not hand the GPU back and forth.

The worker asks `check()` on its heartbeat thread (every few seconds) and before choosing its
queues (worker/steering.py): while paused it reads no render queue, so it takes no new task; the
task it is on is finished, or with `--yield-now` stopped after the diffusion batch in progress
and the rest handed back. The reason goes into its heartbeat, which `farm workers` shows.

NVML, the process list, the desktop's idle time and the clocks are arguments, so that the tests
drive all of it with simulated ones.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from farm.hours import PauseConfigError, in_hours, parse_hours

__all__ = ["PauseConfigError", "PauseGate", "PausePolicy", "in_hours", "make_gate", "parse_hours", "tick"]

log = logging.getLogger("seedfarm.worker")

# Processes that hold a GPU context on every desktop: never a reason to step aside.
IGNORED_GPU_PROCESSES = frozenset({
    "xorg", "xwayland", "gnome-shell", "kwin_x11", "kwin_wayland", "plasmashell", "sway", "mutter",
    "dwm.exe", "explorer.exe", "csrss.exe", "searchhost.exe", "startmenuexperiencehost.exe",
    "shellexperiencehost.exe", "textinputhost.exe", "applicationframehost.exe", "systemsettings.exe",
    "widgets.exe", "lockapp.exe", "nvcontainer.exe", "nvidia share.exe", "nvidia overlay.exe",
})

def exe_key(name: str) -> str:
    """`EldenRing.exe`, `eldenring` -> `eldenring`: names compare without case and `.exe`."""
    name = os.path.basename(name.strip().replace("\\", "/")).lower()
    return name[:-4] if name.endswith(".exe") else name


@dataclass(frozen=True)
class PausePolicy:
    """What makes this worker step aside (farm/config.py's pause settings, flags first)."""

    when_busy: bool = False
    games: tuple[str, ...] = ()
    hours: tuple[tuple[int, int], ...] = ()
    hours_text: str = ""
    user_idle: float = 0.0  # seconds without input before rendering; 0: not watched
    resume_after: float = 60.0
    yield_now: bool = False

    @classmethod
    def from_settings(cls, settings) -> PausePolicy:
        games = settings.games
        if isinstance(games, str):
            games = games.split(",")
        return cls(when_busy=bool(settings.pause_when_busy), games=tuple(g.strip() for g in games if g.strip()),
                   hours=parse_hours(settings.hours), hours_text=(settings.hours or "").replace(" ", ""),
                   user_idle=float(settings.user_idle or 0), resume_after=float(settings.resume_after),
                   yield_now=bool(settings.yield_now))

    def describe(self) -> str:
        parts = []
        if self.hours:
            parts.append(f"renders only {self.hours_text}")
        if self.games:
            parts.append(f"steps aside while {', '.join(self.games)} run(s)")
        if self.when_busy:
            parts.append("steps aside while another process uses the GPU")
        if self.user_idle:
            parts.append(f"renders after {self.user_idle:.0f} s without keyboard or mouse")
        if len(parts) > 1 or self.games or self.when_busy or self.user_idle:
            parts.append(f"resumes {self.resume_after:.0f} s after that ends"
                         + ("; hands a running task back at once" if self.yield_now else ""))
        return "; ".join(parts) or "never pauses by itself (farm worker pause NAME still does)"


# --- the outside world, behind small functions the tests replace --------------------------


class NVML:
    """The processes on one GPU, by NVML (nvidia-ml-py). No driver or no library: no processes."""

    def __init__(self, index: int = 0):
        self.index = index
        self.handle = None
        self.failed = False

    def processes(self) -> list[int]:
        if self.failed:
            return []
        try:
            import pynvml

            if self.handle is None:
                pynvml.nvmlInit()
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            procs = [*pynvml.nvmlDeviceGetComputeRunningProcesses(self.handle),
                     *pynvml.nvmlDeviceGetGraphicsRunningProcesses(self.handle)]
            return sorted({p.pid for p in procs})
        except Exception as e:  # ImportError, NVMLError (no driver, no GPU): watching is off
            self.failed = True
            log.warning("--pause-when-busy: cannot read the GPU's processes (%s); not watching the GPU", e)
            return []


def process_names(pids: Iterable[int] | None = None) -> dict[int, str]:
    """pid -> executable name, of every process (pids=None) or of these."""
    import psutil

    names = {}
    if pids is None:
        for p in psutil.process_iter(["name"]):
            names[p.pid] = p.info.get("name") or ""
        return names
    for pid in pids:
        try:
            names[pid] = psutil.Process(pid).name()
        except Exception:  # gone, or not ours to look at (Windows)
            names[pid] = f"pid {pid}"
    return names


def desktop_idle_seconds() -> float | None:
    """Seconds since the last keyboard or mouse input on this desktop; None where not known."""
    if sys.platform != "win32":
        return None
    import ctypes
    from ctypes import wintypes

    class LASTINPUTINFO(ctypes.Structure):
        _fields_ = [("cbSize", wintypes.UINT), ("dwTime", wintypes.DWORD)]

    info = LASTINPUTINFO(ctypes.sizeof(LASTINPUTINFO), 0)
    if not ctypes.windll.user32.GetLastInputInfo(ctypes.byref(info)):
        return None
    return (ctypes.windll.kernel32.GetTickCount() - info.dwTime) / 1000.0


@dataclass
class PauseGate:
    """This worker's pause state. `check()` returns the reason it is paused, or None."""

    policy: PausePolicy
    remote: Callable[[], str | None] = lambda: None  # the `farm worker pause` request, if any
    gpu_pids: Callable[[], list[int]] = list  # processes on this worker's GPU (NVML)
    names: Callable[[Iterable[int] | None], dict[int, str]] = process_names
    idle_seconds: Callable[[], float | None] = desktop_idle_seconds
    monotonic: Callable[[], float] = time.monotonic
    now: Callable[[], datetime] = datetime.now
    own_pids: frozenset[int] = field(default_factory=lambda: frozenset({os.getpid()}))
    reason: str | None = None  # the last check's answer, for the heartbeat and the queue order
    _busy_reason: str | None = None  # the local reason last seen (game, GPU, user)
    _clear_since: float | None = None  # when the local reason went away
    _idle_unknown_said: bool = False
    yielded: bool = False  # this gate asked the running task to stop (--yield-now)

    def check(self) -> str | None:
        reason = self._reason()
        if bool(reason) != bool(self.reason):
            log.info("paused: %s", reason) if reason else log.info("resumed: taking tasks again")
        self.reason = reason
        return reason

    def _reason(self) -> str | None:
        asked = self.remote()
        if asked:
            return asked
        if not in_hours(self.policy.hours, self.now()):
            return f"outside hours {self.policy.hours_text}"
        busy = self._local_reason()
        t = self.monotonic()
        if busy:
            self._busy_reason, self._clear_since = busy, None
            return busy
        if self._busy_reason is None:
            return None
        if self._clear_since is None:
            self._clear_since = t
        waited = t - self._clear_since
        if waited >= self.policy.resume_after:
            log.info("resuming: %s ended %.0f s ago", self._busy_reason, waited)
            self._busy_reason = self._clear_since = None
            return None
        return f"{self._busy_reason} ended, resuming in {self.policy.resume_after - waited:.0f} s"

    def _local_reason(self) -> str | None:
        p = self.policy
        if p.games:
            wanted = {exe_key(g): g for g in p.games}
            for pid, name in sorted(self.names(None).items()):
                if pid not in self.own_pids and exe_key(name) in wanted:
                    return f"game running: {name}"
        if p.when_busy:
            others = [pid for pid in self.gpu_pids() if pid not in self.own_pids]
            if others:
                named = self.names(others)
                users = [named.get(pid, f"pid {pid}") for pid in others]
                users = [n for n in users if n.lower() not in IGNORED_GPU_PROCESSES]
                if users:
                    return f"GPU in use by {', '.join(sorted(set(users)))}"
        if p.user_idle:
            idle = self.idle_seconds()
            if idle is None:
                if not self._idle_unknown_said:
                    log.warning("--user-idle: this desktop's idle time cannot be read here; not watching input")
                    self._idle_unknown_said = True
            elif idle < p.user_idle:
                return "user active"
        return None

    def should_yield(self) -> bool:
        """Stop the running task after its diffusion batch (and hand the rest back)?"""
        return bool(self.reason) and self.policy.yield_now


def tick(gate: PauseGate, ctx) -> str:
    """One look, on the worker's heartbeat: the reason for its heartbeat ("" when not paused).
    With --yield-now, a pause asks the running task to stop after its diffusion batch (the task
    hands the rest of its group back, as on Ctrl+C); the flag is lowered once the task is over."""
    reason = gate.check()
    if gate.should_yield() and ctx.current_task is not None and not ctx.stopping:
        log.info("paused with --yield-now: handing the running task back after this batch")
        ctx.stopping = gate.yielded = True
    elif gate.yielded and ctx.current_task is None:
        ctx.stopping = gate.yielded = False
    return reason or ""


def make_gate(policy: PausePolicy, gpu: int | None, remote: Callable[[], str | None]) -> PauseGate:
    """The gate of a real worker: NVML on its GPU, the real process list, clocks and desktop."""
    nvml = NVML(0 if gpu is None else gpu)  # NVML counts every GPU, whatever CUDA_VISIBLE_DEVICES says
    return PauseGate(policy, remote=remote, gpu_pids=nvml.processes if policy.when_busy else list)
