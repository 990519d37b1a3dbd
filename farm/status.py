"""What `farm status`, `farm jobs` and `farm workers` print, from the live state in Redis."""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from farm.ledger import JobStatus, Ledger

FINISHED = ("complete", "cancelled")


def stdout_console() -> Console:
    """Tables at full width when piped into a file or another program, not cut at 80 columns."""
    import sys

    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def is_finished(st: JobStatus) -> bool:
    return st.status in FINISHED or st.status.startswith("finished")


def eta_seconds(st: JobStatus) -> float | None:
    """Remaining tasks at the farm's average pace since the first task started."""
    started = float(st.info.get("started_at", 0) or 0)
    finished = st.done + len(st.failed)
    if not started or not finished:
        return None
    rate = finished / max(time.time() - started, 1e-6)
    return (st.tasks - finished) / rate


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def render_status(st: JobStatus, fetching: list[str] = ()) -> Group:
    counts = (f"[bold]{st.job}[/bold]  {st.status}  tasks {st.tasks}: queued {st.queued}, "
              f"running {len(st.running)}, done {st.done}, failed {len(st.failed)}  "
              f"ETA {format_duration(None if is_finished(st) else eta_seconds(st))}")
    parts: list = [counts, ProgressBar(total=max(st.tasks, 1), completed=st.done + len(st.failed), width=60)]
    if st.info.get("backups") or st.info.get("discarded"):  # worker/backups.py
        parts.append(f"backup renders {st.info.get('backups', 0)}, discarded {st.info.get('discarded', 0)} "
                     f"({float(st.info.get('discarded_seconds', 0) or 0):.1f} s of rendering)")
    if st.workers:
        table = Table("worker", "images", "images/s", "loads", "loading s", "rendering now", box=None, pad_edge=False)
        rendering = {w: t for t, w in st.running.items()}
        for name, w in sorted(st.workers.items()):
            speed = f"{w['images'] / w['seconds']:.2f}" if w["seconds"] else "-"
            table.add_row(name, f"{w['images']:.0f}", speed, f"{w['loads']:.0f}", f"{w['load_seconds']:.1f}",
                          rendering.get(name, ""))
        parts.append(table)
    parts += list(fetching)  # models coming from the depot (worker/model_cache.py)
    if st.info.get("reason"):
        parts.append(f"[red]{escape(st.info['reason'])}[/red]")  # store or worker text: no markup
    for task_id, reason in list(st.failed.items())[:5]:
        parts.append(f"[red]failed[/red] {escape(task_id)}: {escape(reason)}")
    for sheet in st.sheets:
        parts.append(f"contact sheet: {sheet}")
    return Group(*parts)


def show_status(ledger: Ledger, job: str, watch: bool, console: Console | None = None) -> bool:
    console = console or stdout_console()
    st = ledger.status(job)
    if st is None:
        return False
    if not watch:
        console.print(render_status(st, downloads(ledger, st)))
        print_dead_letters(ledger, console)
        return True
    with Live(render_status(st, downloads(ledger, st)), console=console, refresh_per_second=2) as live:
        while not is_finished(st):
            time.sleep(1)
            st = ledger.status(job) or st
            live.update(render_status(st, downloads(ledger, st)))
    return True


def downloads(ledger: Ledger, st: JobStatus) -> list[str]:
    """`WORKER fetching NAME 45% 80 MB/s` for each worker fetching a model for one of this job's tasks."""
    return [f"{w.get('name', '')} fetching {w['download']}" for w in ledger.workers()
            if w.get("download") and w.get("task", "").startswith(f"{st.job}/")]


def list_jobs(ledger: Ledger) -> None:
    table = Table("job", "status", "tasks", "done", "failed", "store")
    reasons = []
    for job in ledger.jobs():
        st = ledger.status(job)
        if st is not None:
            table.add_row(job, st.status, str(st.tasks), str(st.done), str(len(st.failed)), st.info.get("store", ""))
            if st.info.get("reason"):
                reasons.append(f"[red]{job}[/red]: {escape(st.info['reason'])}")
    stdout_console().print(table)
    for line in reasons:  # why a job ended with failures (a full disk ...), and what to do
        stdout_console().print(line, markup=True, highlight=False)
    print_dead_letters(ledger, stdout_console())


def print_dead_letters(ledger: Ledger, console: Console) -> None:
    """One line when the workers refused messages (farm/guard.py): how many, the newest's reason."""
    from farm.guard import dead_letter_count, dead_letters

    count = dead_letter_count(ledger.r)
    if count:
        newest = dead_letters(ledger.r, 1)
        why = f"; newest from {escape(newest[0]['queue'])}: {escape(newest[0]['reason'])}" if newest else ""
        console.print(f"[yellow]{count} dead letter(s)[/yellow] refused by workers{why} (farm dead-letters)",
                      markup=True)


def worker_mode(w: dict) -> str:
    """A worker's memory mode and what it offloads: `high`, `med (model offload)`, `low (group offload)`."""
    mode = w.get("profile", "")
    offload = w.get("offload", "")
    return f"{mode} ({offload} offload)" if offload and offload != "none" else mode


def worker_state(w: dict) -> str:
    """`paused: game running: eldenring.exe` (worker/pause.py), `rendering` or `idle`."""
    if w.get("paused"):
        return f"paused: {w['paused']}" + (" (finishing its task)" if w.get("task") else "")
    if w.get("download"):  # a model fetched from the depot (worker/model_cache.py): NAME 45% 80 MB/s
        return f"fetching {w['download']}"
    return "rendering" if w.get("task") else "idle"


def list_workers(ledger: Ledger, console: Console | None = None) -> None:
    table = Table("worker", "host", "GPU", "VRAM GB", "mode", "dtype, batch", "checkpoint", "images", "loads", "loading s",
                  "task", "last seen", "state")
    now = time.time()
    for w in ledger.workers():
        ago = now - float(w.get("last_seen", now))
        dtype = w.get("precision", "")
        if w.get("max_batch"):
            dtype += f", batch {w['max_batch']}"
        checkpoint = w.get("checkpoint", "")
        if checkpoint and w.get("loaded_as"):  # e.g. "Q8_0 as bfloat16, vram low"
            checkpoint += f" ({w['loaded_as']})"
        table.add_row(w.get("name", ""), w.get("host", ""), w.get("gpu", ""), w.get("vram_gb", ""), worker_mode(w),
                      dtype, checkpoint, w.get("images_done", "0"), w.get("loads", "0"),
                      w.get("load_seconds", "0"), w.get("task", ""), f"{ago:.0f} s ago", worker_state(w))
    (console or stdout_console()).print(table)
