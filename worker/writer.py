"""Storing finished images on a background thread, so the next render starts at once.

PNG encoding, the infotext, the image and record uploads all happen here while the GPU renders
the next batch. At most `max_pending` batches wait; a store slower than the GPU then holds the
renderer back instead of filling memory with images. A write that fails is tried again a few
times, then the task is reported failed with the reason; a permanent error (disk full, read-only,
access denied, no such bucket: farm/store/failures.py) is not retried, and its reason starts with
`REFUSED` so that the worker stops rendering for that store.

Each finished batch is a `Batch` whose `done` callback runs on this thread after its last image is
in the store; that is where the worker reports the task finished (worker/render_loop.py). A task's
message may be acked before its images are stored; what covers a PC switched off in between is
the ledger's reaper (farm/ledger.py), which re-queues tasks whose worker stopped beating.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from farm.store.failures import REFUSED, permanent
from farm.tunables import WRITE_RETRY_DELAYS, WRITER_MAX_PENDING

log = logging.getLogger("seedfarm.worker")


@dataclass
class Batch:
    """Writes for some images and what to call once they are stored (or once they failed)."""

    writes: list[Callable[[], None]]  # each stores one image and its record
    done: Callable[[str | None], None]  # called with None, or the reason the writes failed


class ImageWriter:
    def __init__(self, max_pending: int = WRITER_MAX_PENDING,
                 retry_delays: tuple[float, ...] = WRITE_RETRY_DELAYS):
        self.retry_delays = retry_delays
        self.write_seconds = 0.0  # total time spent writing, for benchmarks/overlap.py
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="image-writer", daemon=True)
        self._thread.start()

    def submit(self, batch: Batch) -> None:
        """Queue a batch; blocks while max_pending batches already wait."""
        self._queue.put(batch)

    def flush(self) -> None:
        """Wait until every batch submitted so far is stored (or failed)."""
        self._queue.join()

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                self._write(batch)
            finally:
                self._queue.task_done()

    def _write(self, batch: Batch) -> None:
        started = time.perf_counter()
        failure = None
        for write in batch.writes:
            failure = self._try(write)
            if failure:
                break
        self.write_seconds += time.perf_counter() - started
        try:
            batch.done(failure)
        except Exception:  # e.g. Redis away while reporting: the reaper or `farm resume` repairs it
            log.exception("reporting a stored batch failed")

    def _try(self, write: Callable[[], None]) -> str | None:
        for delay in (*self.retry_delays, None):
            try:
                write()
                return None
            except Exception as e:
                reason = f"{type(e).__name__}: {e}"
                if permanent(e):  # a full disk stays full: no use waiting 42 s for it
                    log.error("the store refuses writes: %s", reason)
                    return f"{REFUSED}{reason}"
                if delay is None:
                    log.error("storing an image failed for good: %s", reason)
                    return f"storing the image failed: {reason}"
                log.warning("storing an image failed (%s); trying again in %.0f s", reason, delay)
                time.sleep(delay)
        return None
