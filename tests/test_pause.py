"""Stepping aside for games (worker/pause.py): the policy with a simulated NVML, process list,
desktop and clocks; the settings; and end to end, a real worker that a running "game" and
`farm worker pause/resume` keep from taking tasks, as `farm workers` shows."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime

import pytest

from conftest import farm
from farm.config import load_settings
from farm.ledger import Ledger
from worker.pause import PauseConfigError, PauseGate, PausePolicy, in_hours, parse_hours, tick


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def gate(policy: PausePolicy, *, gpu=(), procs=None, idle=None, remote=None, clock=None, now=None) -> PauseGate:
    """A gate over a simulated PC: `gpu` the pids NVML lists, `procs` pid -> name of every process."""
    procs = procs if procs is not None else {}
    state = {"gpu": list(gpu), "procs": procs, "idle": idle, "remote": remote}

    def names(pids):
        return dict(state["procs"]) if pids is None else {p: state["procs"].get(p, f"pid {p}") for p in pids}

    g = PauseGate(policy, remote=lambda: state["remote"], gpu_pids=lambda: state["gpu"], names=names,
                  idle_seconds=lambda: state["idle"], monotonic=clock or Clock(),
                  now=lambda: now or datetime(2025, 1, 1, 12, 0), own_pids=frozenset({1}))
    g.sim = state
    return g


def test_hours_parse_wrap_midnight_and_refuse_nonsense():
    assert parse_hours("01:00-08:00") == ((60, 480),)
    assert parse_hours("22:00-07:30, 12:00-13:00") == ((1320, 450), (720, 780))
    night = parse_hours("22:00-07:30")
    assert in_hours(night, datetime(2025, 1, 1, 23, 59)) and in_hours(night, datetime(2025, 1, 1, 3, 0))
    assert not in_hours(night, datetime(2025, 1, 1, 7, 30)) and not in_hours(night, datetime(2025, 1, 1, 12, 0))
    assert in_hours((), datetime(2025, 1, 1, 12, 0))
    for bad in ("1-8", "25:00-08:00", "08:00-08:00", "01:00"):
        with pytest.raises(PauseConfigError, match="--hours"):
            parse_hours(bad)


def test_a_game_pauses_and_the_worker_resumes_only_after_resume_after_seconds():
    clock = Clock()
    g = gate(PausePolicy(games=("EldenRing.exe",), resume_after=60), procs={5: "explorer.exe"}, clock=clock)
    assert g.check() is None
    g.sim["procs"][42] = "eldenring.exe"  # case and .exe do not matter
    assert g.check() == "game running: eldenring.exe"
    del g.sim["procs"][42]
    clock.t += 1
    assert g.check() == "game running: eldenring.exe ended, resuming in 60 s"
    clock.t += 59.5
    assert g.check().endswith("resuming in 0 s")
    clock.t += 1
    assert g.check() is None


def test_gpu_busy_counts_other_processes_but_not_the_desktop_or_itself():
    g = gate(PausePolicy(when_busy=True, resume_after=0), gpu=[1, 7, 8], procs={1: "python", 7: "Xorg", 8: "dwm.exe"})
    assert g.check() is None  # itself (pid 1) and the desktop's compositors
    g.sim["gpu"].append(9)
    g.sim["procs"][9] = "cyberpunk2077.exe"
    assert g.check() == "GPU in use by cyberpunk2077.exe"
    g.sim["gpu"].remove(9)
    assert g.check() is None  # resume_after 0: at once
    # not asked to watch the GPU: NVML is not even read
    quiet = gate(PausePolicy(), gpu=[9], procs={9: "cyberpunk2077.exe"})
    assert quiet.check() is None


def test_remote_pause_and_schedule_come_first_and_need_no_wait():
    g = gate(PausePolicy(hours=parse_hours("01:00-08:00"), hours_text="01:00-08:00", resume_after=60),
             now=datetime(2025, 1, 1, 12, 0))
    assert g.check() == "outside hours 01:00-08:00"
    g.sim["remote"] = "paused from desk-pc"
    assert g.check() == "paused from desk-pc"
    g.now = lambda: datetime(2025, 1, 1, 3, 0)
    assert g.check() == "paused from desk-pc"
    g.sim["remote"] = None
    assert g.check() is None


def test_user_activity_pauses_where_the_desktop_idle_time_is_known():
    clock = Clock()
    g = gate(PausePolicy(user_idle=300, resume_after=0), idle=12.0, clock=clock)
    assert g.check() == "user active"
    g.sim["idle"] = 301.0
    assert g.check() is None
    g.sim["idle"] = None  # Linux, or no desktop: not watched (and said once in the log)
    assert g.check() is None


def test_yield_now_stops_the_running_task_and_lowers_the_flag_after_it():
    class Ctx:
        current_task = object()
        stopping = False

    ctx = Ctx()
    g = gate(PausePolicy(games=("game.exe",), yield_now=True, resume_after=0), procs={3: "game.exe"})
    assert tick(g, ctx) == "game running: game.exe"
    assert ctx.stopping and g.yielded
    ctx.current_task = None  # the task handed the rest of its group back and returned
    tick(g, ctx)
    assert not ctx.stopping and not g.yielded
    finish = gate(PausePolicy(games=("game.exe",)), procs={3: "game.exe"})
    ctx.current_task = object()
    tick(finish, ctx)
    assert not ctx.stopping  # without --yield-now the running task is finished


def test_settings_from_flags_env_and_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("FARM_CONFIG", raising=False)
    monkeypatch.setenv("FARM_GAMES", "eldenring.exe, cs2.exe")
    monkeypatch.setenv("FARM_HOURS", "01:00-08:00")
    policy = PausePolicy.from_settings(load_settings(None))
    assert policy.games == ("eldenring.exe", "cs2.exe") and policy.hours == ((60, 480),)
    monkeypatch.delenv("FARM_GAMES")
    conf = tmp_path / "farm.yaml"
    conf.write_text("pause_when_busy: true\ngames: [witcher3.exe]\nresume_after: 30\nyield_now: true\n")
    policy = PausePolicy.from_settings(load_settings(str(conf)))
    assert policy.when_busy and policy.games == ("witcher3.exe",) and policy.resume_after == 30 and policy.yield_now
    assert "witcher3.exe" in policy.describe()


def test_bad_hours_is_one_line_before_anything_starts(tmp_path):
    result = farm("worker", "--broker", "redis://127.0.0.1:1/0", "--models", str(tmp_path), "--hours", "25:00-08:00")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: --hours '25:00-08:00': expected HH:MM-HH:MM[,HH:MM-HH:MM...], e.g. 01:00-08:00"]


SPEC = """\
name: paused
prompt: a red bicycle
checkpoint: seedfarm-tiny
size: 64x64
steps: 2
seed: 1-2
"""


def test_a_worker_steps_aside_for_a_game_and_for_farm_worker_pause(redis_server, tiny_models, tmp_path,
                                                                     start_worker):
    from test_e2e_farm import wait_for

    ledger = Ledger(redis_server.client())
    game_exe = tmp_path / "fakegame"
    shutil.copy(shutil.which("sleep"), game_exe)
    game = subprocess.Popen([str(game_exe), "600"])
    try:
        w = start_worker(redis_server.url, tiny_models, "gamer", args=("--games", "fakegame", "--resume-after", "1"))
        w.wait_ready()

        def state():
            listed = farm("workers", "--broker", redis_server.url)
            return listed.stdout if "gamer" in listed.stdout else ""

        assert "paused: game running: fakegame" in wait_for(state, 30, "farm workers to show the pause")
        spec = tmp_path / "paused.yaml"
        spec.write_text(SPEC)
        sub = farm("submit", str(spec), "--broker", redis_server.url, "--store", str(tmp_path / "out"),
                   "--models", str(tiny_models))
        assert sub.returncode == 0, sub.stderr
        job = sub.stdout.strip()
        import time

        time.sleep(4)  # submit pokes the worker, a tiny task renders in under a second: it took none
        assert ledger.status(job).done == 0
    finally:
        game.terminate()
        game.wait(10)
    wait_for(lambda: ledger.job_info(job).get("status") == "complete", 90, "the job to render after the game")

    paused = farm("worker", "pause", "gamer", "--broker", redis_server.url, "--reason", "owner is streaming")
    assert paused.returncode == 0 and "paused gamer" in paused.stdout
    assert "paused: owner is streaming" in wait_for(
        lambda: "owner is streaming" in state() and state(), 30, "the remote pause to show")
    resumed = farm("worker", "resume", "gamer", "--broker", redis_server.url)
    assert resumed.returncode == 0 and "resumed gamer" in resumed.stdout
    wait_for(lambda: "idle" in state() and "paused:" not in state(), 30, "the worker to resume")
    again = farm("worker", "resume", "gamer", "--broker", redis_server.url)
    assert again.returncode == 1 and "was not paused" in again.stderr
