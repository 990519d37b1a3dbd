"""A worker's model cache: the models it fetched from the depot (farm/depot.py), because a task
pinned a model (by sha256, whatever its name here) that its own models folders lack.

The cache is a models folder of its own, searched after the user's (`farm worker` joins it to
--models), laid out as A1111's so the registry finds its files by name:

    {cache}/Stable-diffusion/{sha256}/{name}.safetensors     (Lora/, VAE/, embeddings/, text_encoders/)
    {cache}/{sha256}/.used                                    touched on each use: least recently used
    {cache}/.locks/{sha256}.lock                              one download per model per PC

A download is streamed into a temp file in the entry's folder while its sha256 is computed, and
renamed to its name only when the hash is the pin: a file under a model name is always whole and
verified, whatever killed a worker before. Nothing is ever written into the user's own folders.
Several worker processes on one PC share the cache: the per-model file lock makes the second wait
for the first's download and then use it. To make room, the least recently used entries go, never
one the running task needs nor one being downloaded.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock, Timeout

from farm.depot import Depot, DepotError, DepotRecord, url_open, url_record, words_in
from farm.hashes import remember_sha256, sha256_file
from farm.model_files import ModelFileError
from farm.models import Registry, human_size
from farm.prompts import extract_extra_networks, lora_refs
from farm.store import TEMP_PREFIX
from farm.task import RenderTask
from farm.tunables import (ASSUMED_FETCH_MBPS, DEPOT_DOWN_SECONDS, DEPOT_LOOKUP_TTL, DEPOT_RETRY_DELAYS,
                           DEPOT_WAIT_SECONDS)
from worker.context import TaskError

log = logging.getLogger("seedfarm.worker")

# The A1111 folder of each kind (farm/models.py KIND_DIRS' first), so the registry finds the files.
KIND_FOLDERS = {"checkpoint": "Stable-diffusion", "lora": "Lora", "vae": "VAE", "embedding": "embeddings",
                "text_encoder": "text_encoders"}
USED = ".used"
LOCKS = ".locks"
# Bytes per block of a download: a block is read, written and hashed while it is still in a core's
# cache (measured on a 2-core VM: 4-8 MiB blocks cost 2-4x the CPU of 256 KiB ones, under load).
BLOCK = 256 << 10
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)B?", re.IGNORECASE)


class DepotUnreachable(Exception):
    """The depot did not answer: not the task's fault, so it goes back to its queue (worker/tasks.py,
    depot_wait below) rather than failing, while someone may still render it."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind  # of the model it could not fetch: a checkpoint's holders can render the task


class CacheConfigError(Exception):
    """A --model-cache or --depot that cannot be used, said in one line."""


class HashMismatch(Exception):
    pass


class _DepotHiccup(Exception):
    """The depot failed to answer (its error is the cause): worth another try."""


def default_cache_dir() -> Path:
    """The user's cache folder, beside farm/hashes.py's: FARM_CACHE_DIR, XDG_CACHE_HOME or ~/.cache."""
    base = os.environ.get("FARM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "seedfarm")
    return Path(base) / "models"


def parse_size(text: str) -> int:
    """'200G', '500M', '1.5T', '1000000' -> bytes (decimal units, as disks are sold)."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"cache size '{text}': expected a number with K, M, G or T, e.g. 200G")
    return int(float(m.group(1)) * 1000 ** " KMGT".index(m.group(2).upper() or " "))


class ModelCache:
    """One worker process's view of the PC's model cache and the depot it fetches from."""

    def __init__(self, root: Path, limit: int, depot: Depot | None,
                 report: Callable[[str], None] = lambda text: None):
        self.root = Path(root).expanduser().absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        self.limit = limit
        self.depot = depot
        self.report = report  # "NAME 45% 80 MB/s" while downloading, "" after: `farm workers` shows it
        self.in_use: set[str] = set()  # sha256s of the cached models the running task needs
        self.mbps = ASSUMED_FETCH_MBPS  # the last download's measured speed
        self.down_until = 0.0  # the depot did not answer: offer no fetching until then
        self._lookups: dict[tuple, tuple[float, object]] = {}  # records (or None), lists of names
        self.url_errors: dict[str, str] = {}  # URL -> why its last look failed

    # --- what is here ----------------------------------------------------------------------------

    def cached(self, sha256: str) -> Path | None:
        """The cached file with this sha256 (its folder's name; written only after verifying)."""
        for kind, folder in KIND_FOLDERS.items():
            entry = self.root / folder / sha256
            for f in entry.glob("*") if entry.is_dir() else ():
                if f.is_file() and not f.name.startswith((TEMP_PREFIX, ".")):
                    return f
        return None

    def entries(self) -> list[tuple[Path, int, float]]:
        """(folder, bytes, last used) of every cached model."""
        found = []
        for folder in KIND_FOLDERS.values():
            base = self.root / folder
            for entry in base.iterdir() if base.is_dir() else ():
                files = [f for f in entry.iterdir() if f.is_file()] if entry.is_dir() else []
                used = entry / USED
                last = used.stat().st_mtime if used.exists() else entry.stat().st_mtime
                found.append((entry, sum(f.stat().st_size for f in files), last))
        return found

    def holds(self) -> list[str]:
        """The sha256s cached here."""
        return [entry.name for entry, _, _ in self.entries()]

    def can_fetch(self) -> bool:
        """Whether this worker offers to fetch now (--cache-size 0: never)."""
        return self.depot is not None and self.limit > 0 and time.time() >= self.down_until

    def lookup(self, kind: str, name: str, sha256: str | None) -> DepotRecord | None:
        """The depot's record of a pinned model (by sha256), or of a name (a LoRA tag); remembered
        for DEPOT_LOOKUP_TTL seconds, absent ones too. None when there is no depot or it does not answer."""
        if self.depot is None:
            return None
        key = (kind, name, sha256)
        seen = self._lookups.get(key)
        if seen and time.monotonic() - seen[0] < DEPOT_LOOKUP_TTL:
            return seen[1]
        try:
            record = self.depot.record(sha256) if sha256 else self.depot.by_name(kind, name)
        except Exception as e:  # a depot away: nothing fetchable for a while (each look may take long)
            log.warning("model depot %s does not answer (%s): fetching nothing for %.0f s", self.depot.describe(),
                        e, DEPOT_DOWN_SECONDS)
            self.down_until = time.time() + DEPOT_DOWN_SECONDS
            record = None
        self._lookups[key] = (time.monotonic(), record)
        return record

    def depot_names(self, kind: str) -> list[str]:
        """The stems the depot has of a kind (embeddings: a prompt names them by word), remembered
        for DEPOT_LOOKUP_TTL seconds; none when fetching is off or the depot does not answer."""
        seen = self._lookups.get(("names", kind))
        if seen and time.monotonic() - seen[0] < DEPOT_LOOKUP_TTL:
            return seen[1]
        names: list[str] = []
        if self.can_fetch():
            try:
                names = self.depot.names(kind)
            except Exception as e:  # as lookup(): a depot away offers nothing for a while
                log.warning("model depot %s does not answer (%s): fetching nothing for %.0f s",
                            self.depot.describe(), e, DEPOT_DOWN_SECONDS)
                self.down_until = time.time() + DEPOT_DOWN_SECONDS
        self._lookups[("names", kind)] = (time.monotonic(), names)
        return names

    def url_lookup(self, kind: str, name: str, sha256: str, url: str) -> DepotRecord | None:
        """The record of a model a spec gives by URL (its size from a HEAD request), remembered for
        DEPOT_LOOKUP_TTL seconds; None when the URL does not answer (why: url_errors[url])."""
        key = ("url", kind, name, sha256, url)
        seen = self._lookups.get(key)
        if seen and time.monotonic() - seen[0] < DEPOT_LOOKUP_TTL:
            return seen[1]
        try:
            record = url_record(kind, name, url, sha256)
        except (OSError, ValueError, DepotError) as e:
            log.warning("%s does not answer (%s): %s '%s' cannot be fetched now", url, e, kind, name)
            self.url_errors[url] = str(e)
            record = None
        self._lookups[key] = (time.monotonic(), record)
        return record

    def fetch_seconds(self, size: int) -> float:
        """The routing estimate of a fetch: size over the last measured (or assumed) speed."""
        return size / (self.mbps * 1e6)

    # --- what a task needs -----------------------------------------------------------------------

    def ensure(self, task: RenderTask, registry: Registry) -> None:
        """Fetch into the cache every model the task names that is not here with its pin: the
        checkpoint, its text encoders, VAE, LoRAs and embeddings (pinned by sha256 when the job's
        coordinator had the file; else by name). What the depot lacks is left to the render's
        message ('unknown model', or a same-named file whose hash is not the pin)."""
        needs: list[tuple[str, str, str | None]] = [("checkpoint", task.checkpoint, task.checkpoint_hash)]
        if task.vae:
            needs.append(("vae", task.vae, task.vae_hash))
        for role, name in task.text_encoders.items():
            if name:
                needs.append(("text_encoder", name, task.part_hashes.get(role)))
        for text in {task.prompt, task.hr_prompt}:
            try:
                needs += [("lora", ref.name, task.lora_hashes.get(ref.name))
                          for ref in lora_refs(extract_extra_networks(text)[1])]
            except ValueError:
                pass  # the render reports the bad tag
        texts = (task.prompt, task.negative_prompt, task.hr_prompt, task.hr_negative_prompt)
        names = dict.fromkeys([*words_in(task.embedding_hashes, texts), *words_in(self.depot_names("embedding"), texts)])
        needs += [("embedding", name, task.embedding_hashes.get(name)) for name in names]
        self.in_use = set()
        for kind, name, sha in needs:
            link = task.model_urls.get(f"{kind}:{name}")  # given by URL in the spec: fetched from there
            sha = sha or (link[0] if link else None)  # a LoRA given so is pinned too
            here = self.local(registry, kind, name, sha)
            if here is not None:
                if sha and here.is_relative_to(self.root):
                    self.in_use.add(sha)
                    self.touch(here.parent)
                continue
            if link is not None and self.limit > 0:
                record = self.url_lookup(kind, name, *link)
                if record is None:
                    raise DepotUnreachable(f"cannot reach {link[1]} to fetch {kind} '{name}' "
                                           f"({self.url_errors.get(link[1])}): is this PC online?", kind)
                self.in_use.add(record.sha256)
                self.fetch(record)
                continue
            record = self.lookup(kind, name, sha) if self.can_fetch() else None
            if self.depot is not None and self.limit > 0 and not self.can_fetch():  # lately, or this look
                raise DepotUnreachable(f"the model depot {self.depot.describe()} did not answer lately: cannot "
                                       f"fetch {kind} '{name}' now", kind)
            if record is None or record.kind != kind:
                continue
            self.in_use.add(record.sha256)
            self.fetch(record)

    def local(self, registry: Registry, kind: str, name: str, sha256: str | None) -> Path | None:
        """The file here (the user's folders or the cache) for a model reference and its pin."""
        if sha256:
            cached = self.cached(sha256)
            if cached is not None:
                return cached
        try:
            path = registry.resolve(kind, name).path
        except ModelFileError:
            return None
        return path if not sha256 or sha256_file(path) == sha256 else None

    def touch(self, entry: Path) -> None:
        try:
            (entry / USED).touch()
        except OSError:
            pass  # a read-only cache only loses its LRU order

    # --- downloading -----------------------------------------------------------------------------

    def fetch(self, record: DepotRecord) -> Path:
        """The cached file of a depot model, downloaded first if no process on this PC has it."""
        entry = self.root / KIND_FOLDERS[record.kind] / record.sha256
        stem = re.sub(r"[^\w.\- ]+", "_", record.name).strip(" .") or record.sha256[:16]
        target = entry / f"{stem}{record.suffix}"
        (self.root / LOCKS).mkdir(exist_ok=True)
        with FileLock(self.root / LOCKS / f"{record.sha256}.lock"):
            found = self.cached(record.sha256)
            if found is not None:  # another worker process on this PC fetched it while we waited
                self.touch(entry)
                return found
            for stale in entry.glob(f"{TEMP_PREFIX}*"):  # a download killed before: never trusted
                stale.unlink(missing_ok=True)
            self.make_room(record)
            entry.mkdir(parents=True, exist_ok=True)
            for attempt in (1, 2):
                try:
                    self.download(record, entry, target)
                    break
                except HashMismatch as e:
                    if attempt == 2:
                        raise TaskError(str(e)) from None
                    log.warning("%s; downloading it again", e)
        self.touch(entry)
        return target

    def download(self, record: DepotRecord, entry: Path, target: Path) -> None:
        """Stream the depot object into a temp file, hashing as it comes, and rename it when the hash
        is the pin. A depot that does not answer (at the start or mid-way) is tried again from the
        start after DEPOT_RETRY_DELAYS, then DepotUnreachable."""
        for delay in (*DEPOT_RETRY_DELAYS, None):
            try:
                return self._download_once(record, entry, target)
            except _DepotHiccup as e:
                if delay is None:
                    self.down_until = time.time() + DEPOT_DOWN_SECONDS
                    raise DepotUnreachable(f"cannot reach {self.where(record)} to fetch {record.kind} "
                                           f"'{record.name}' ({e.__cause__}): is this PC online?",
                                           record.kind) from None
                log.warning("cannot reach %s: %s; trying again in %.0f s", self.where(record), e.__cause__, delay)
                time.sleep(delay)

    def _download_once(self, record: DepotRecord, entry: Path, target: Path) -> None:
        temp = entry / f"{TEMP_PREFIX}{uuid.uuid4().hex}.tmp"
        digest, done, started, shown = hashlib.sha256(), 0, time.monotonic(), 0.0
        try:
            with self._open(record) as source, open(temp, "wb") as f:
                # a thread reads and writes the blocks; this one hashes each block it wrote, behind it
                for block in _copied(source, f, record.size):
                    done += len(block)
                    digest.update(block)
                    now = time.monotonic()
                    if now - shown >= 0.5:
                        shown = now
                        self.report(f"{record.name} {100 * done // max(record.size, 1)}% "
                                    f"{done / 1e6 / max(now - started, 1e-6):.0f} MB/s")
                f.flush()
                os.fsync(f.fileno())
            if done != record.size or digest.hexdigest() != record.sha256:
                # a URL's file is no copy to push again: the pin a spec or `farm models link` gives may be wrong
                source, fix = ((f"the file at {record.url}", "check the sha256 given for it") if record.url else
                               ("depot copy", "push it again from a good copy"))
                raise HashMismatch(f"{source} of {record.kind} '{record.name}' is corrupted (sha256 "
                                   f"{digest.hexdigest()[:10]}, {done} bytes; pinned {record.sha256[:10]}, "
                                   f"{record.size} bytes): discarded; {fix}")
            os.replace(temp, target)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise TaskError(f"disk full in the model cache {self.root} while fetching {record.kind} "
                                f"'{record.name}' ({human_size(record.size)}): free space or use "
                                "--model-cache on another disk") from None
            raise
        finally:
            temp.unlink(missing_ok=True)  # whatever stopped it: no part of a file is left behind
            self.report("")
        seconds = time.monotonic() - started
        if seconds > 0 and record.size > 1e6:
            self.mbps = record.size / 1e6 / seconds
        remember_sha256(target, record.sha256)  # verified while streaming: not read again
        log.info("fetched %s '%s' (%s) from the depot in %.1f s (%.0f MB/s)", record.kind, record.name,
                 human_size(record.size), seconds, record.size / 1e6 / max(seconds, 1e-6))

    def _open(self, record: DepotRecord):
        """The depot object, opened to read. Its errors are the depot's (_DepotHiccup), not the
        cache's; a missing object fails the task: the record says it should be there."""
        try:
            return url_open(record.url) if record.url else self.depot.open(record)
        except FileNotFoundError:
            raise TaskError(f"{self.where(record)} has no file for {record.kind} '{record.name}' "
                            "(the depot's record names it): push it again") from None
        except Exception as e:  # boto's connection errors, a share gone away
            raise _DepotHiccup() from e

    def where(self, record: DepotRecord) -> str:
        """Where a model's bytes come from, for messages (a spec's URL needs no depot)."""
        return record.url or self.depot.describe()

    def make_room(self, record: DepotRecord) -> None:
        """Evict least recently used models until this one fits under the limit and on the disk."""
        if record.size > self.limit:
            raise TaskError(f"{record.kind} '{record.name}' ({human_size(record.size)}) is larger than the "
                            f"model cache's --cache-size ({human_size(self.limit)}): raise it")
        entries = sorted(self.entries(), key=lambda e: e[2])
        total = sum(size for _, size, _ in entries)
        for entry, size, _ in entries:
            if total + record.size <= self.limit:
                break
            if entry.name in self.in_use or not self._evict(entry):
                continue
            total -= size
        if total + record.size > self.limit:
            raise TaskError(f"model cache {self.root} is full of models in use ({human_size(total)} of "
                            f"{human_size(self.limit)}): cannot fetch {record.kind} '{record.name}' "
                            f"({human_size(record.size)}); raise --cache-size")
        free = shutil.disk_usage(self.root).free
        if free < record.size:
            raise TaskError(f"disk full: {human_size(free)} free for the model cache {self.root}, "
                            f"{record.kind} '{record.name}' needs {human_size(record.size)}: free space "
                            "or use --model-cache on another disk")

    def _evict(self, entry: Path) -> bool:
        """Remove a cached model unless another process is downloading it right now."""
        lock = FileLock(self.root / LOCKS / f"{entry.name}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False
        try:
            shutil.rmtree(entry, ignore_errors=True)
            log.info("model cache: evicted %s (least recently used)", entry.name[:16])
            return not entry.exists()
        finally:
            lock.release()


def depot_wait(ledger, worker: str, task: RenderTask, error: DepotUnreachable) -> str | None:
    """None when a task whose model could not be fetched goes back to its queue: a live worker
    (not this one, not paused) holds its checkpoint, or the depot may still come back (within
    DEPOT_WAIT_SECONDS of the task's first such failure); else the one line the task fails with."""
    waited = time.time() - ledger.depot_wait_since(task.job, task.id, DEPOT_WAIT_SECONDS)
    if error.kind == "checkpoint":
        for w in ledger.workers():
            if w.get("name") != worker and not w.get("paused") and task.checkpoint in json.loads(w.get("holds") or "[]"):
                return None
    if waited < DEPOT_WAIT_SECONDS:
        return None
    return f"{error} (for {waited / 60:.0f} min, and no live worker holds it)"


def _copied(source, sink, limit: int, blocks: int = 16):
    """Copy `source` into `sink` in a thread, block by block (BLOCK bytes read into reused buffers:
    `blocks` of them bound the memory), and yield each block once it is written, so that the caller
    hashes exactly the bytes written while the next ones are read and written (hashlib and file and
    socket I/O release the GIL). Stops after `limit` bytes are passed (a hostile or changed object
    gets no further). A read error is raised here as _DepotHiccup, a write error as itself."""
    free: queue.Queue = queue.Queue()
    written: queue.Queue = queue.Queue()
    stop = threading.Event()
    for _ in range(blocks):
        free.put(bytearray(BLOCK))

    def copy() -> None:
        total = 0
        try:
            while total <= limit:
                while not stop.is_set():
                    try:
                        buffer = free.get(timeout=0.2)
                        break
                    except queue.Empty:
                        continue
                else:
                    return  # the caller stopped reading
                try:
                    n = _fill(source, buffer)
                except Exception as e:  # boto's connection errors, a share gone away
                    raise _DepotHiccup() from e
                if n == 0 or stop.is_set():
                    break
                sink.write(memoryview(buffer)[:n])  # a buffered file writes it all or raises
                total += n
                written.put((buffer, n))
            written.put(None)
        except BaseException as e:  # handed to the caller, in order
            written.put(e)

    threading.Thread(target=copy, daemon=True, name="depot-copy").start()
    try:
        while (item := written.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            buffer, n = item
            yield memoryview(buffer)[:n]
            free.put(buffer)
    finally:
        stop.set()


def _fill(source, buffer: bytearray) -> int:
    """Read into the whole buffer (a socket gives less per call) unless the stream ends first."""
    view, n = memoryview(buffer), 0
    while n < len(buffer):
        got = source.readinto(view[n:])
        if not got:
            break
        n += got
    return n
