"""A worker choosing which queues it reads, and in what order (the policy is worker/queue_order.py).

Runs in the worker's main thread only, after every task (Celery's task_postrun) and once when the
consumer starts. New work reaches an idle worker as a no-op `seedfarm.refresh` task on its own
queue (sent by `farm submit`, and by the worker's heartbeat to itself every few seconds while
idle), so the re-read also happens after a task. The solo pool never changes the consumer under
a running render.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from celery import Celery, bootsteps, signals

from farm.celery_app import REFRESH_TASK

from farm.checkpoints import find_checkpoints
from farm.families import checkpoint_family, pixel_budget
from farm.hashes import sha256_file
from farm.ledger import Ledger
from farm.messages import Route
from farm.model_files import ModelFileError
from farm.models import Registry
from farm.vram import Footprint, Memory, Weights, assemble, file_weights, footprint, has_parts
from worker.queue_order import Capabilities, next_checkpoint, queue_order

log = logging.getLogger("seedfarm.worker")


class Steering:
    def __init__(self, ledger: Ledger, ctx, models_dir: Path, vram_gb: float | None,
                 max_pixels: int | None, tags: frozenset[str], home_queue: str,
                 mode: str = "high", dtype: str = "fp16", pause=None):
        self.ledger = ledger
        self.pause = pause  # worker.pause.PauseGate: while it gives a reason, read no render queue
        self.ctx = ctx
        self.models_dir = models_dir
        self.vram_gb = vram_gb  # None on a CPU worker: no pixel limit
        self.memory = Memory(vram_gb, mode, dtype) if vram_gb is not None else None
        self._footprints: dict[tuple, Footprint | None] = {}  # files and their sizes -> what they hold
        self.max_pixels = max_pixels
        self.tags = tags
        self.home_queue = home_queue  # this worker's own queue; always read, never reordered
        self.consumer = None
        self.order: list[str] = []
        self.routes_seen: dict[str, str] = {}  # queue -> its checkpoint, from the last look
        self.serves: set[str] = set()  # queues this worker could render, from the last full look
        # Whether the queues in the order held work at the last refresh (None: it did not look), so
        # that the backup check right after it (worker/backups.py) needs no round trip of its own.
        self.work_waiting: bool | None = None

    def capabilities(self, routes: dict[str, Route]) -> Capabilities:
        files = find_checkpoints(self.models_dir)
        checkpoints: dict[str, str | None] = {name: None for name in files}
        limits: dict[str, int] = {}
        footprints: dict[tuple[str, tuple], Footprint | str] = {}
        registry = Registry(self.models_dir)
        for route in routes.values():
            path = files.get(route.checkpoint)
            if path is None:
                continue
            if route.checkpoint_hash:
                checkpoints[route.checkpoint] = sha256_file(path)  # cached after the first time
            # the family from the file's header or the folder's model_index.json alone
            family_name = checkpoint_family(route.checkpoint, files, {})
            if self.max_pixels is not None:
                limits[route.checkpoint] = self.max_pixels
            elif self.vram_gb is not None and not has_parts(family_name):
                limits[route.checkpoint] = pixel_budget(self.vram_gb, family_name)
            key = (route.checkpoint, route.parts)
            refiner = dict(route.parts).get("refiner")
            if refiner and not has_parts(family_name):  # an SDXL render with a refiner: both on the card
                footprints[key] = (Footprint(family_name, Weights(0, "?"), refiner="SDXL refiner") if refiner in files
                                   else f"no refiner checkpoint '{refiner}' here")
            if has_parts(family_name) and key not in footprints:
                held = self.footprint(family_name, path, route.parts, registry)
                if held is not None:
                    footprints[key] = held
        if self.ctx is not None:  # announced in the heartbeat (holders take a fetch's work first)
            self.ctx.holds = sorted({r.checkpoint for r in routes.values() if r.checkpoint in files})
        fetchable: dict[str, float] = {}
        cache = self.ctx.model_cache if self.ctx is not None else None
        for route in routes.values() if cache is not None and cache.can_fetch() else ():
            if route.checkpoint in files or route.checkpoint in fetchable:
                continue
            if route.url and route.checkpoint_hash:  # given by URL in the spec
                record = cache.url_lookup("checkpoint", route.checkpoint, route.checkpoint_hash, route.url)
            else:
                record = cache.lookup("checkpoint", route.checkpoint, route.checkpoint_hash)
            if record is None or record.kind != "checkpoint":
                continue
            fetchable[route.checkpoint] = cache.fetch_seconds(record.size)
            if has_parts(record.family) and "denoiser" in record.held():  # weighed from the record before fetching
                held = self.depot_footprint(record, route.parts, registry, cache)
                if held is not None:
                    footprints[(route.checkpoint, route.parts)] = held
            if self.max_pixels is not None:
                limits[route.checkpoint] = self.max_pixels
            elif self.vram_gb is not None and not has_parts(record.family):
                limits[route.checkpoint] = pixel_budget(self.vram_gb, record.family)
        return Capabilities(checkpoints, limits, self.tags, footprints, self.memory, fetchable)

    def footprint(self, family_name: str, path: Path, parts: tuple[tuple[str, str], ...],
                  registry: Registry) -> Footprint | str | None:
        """What a render of this checkpoint with these parts holds here (farm/vram.py), from this
        worker's own files; a line saying which part is missing here; None when a file cannot be
        read (the task then fails on load, with the file's own message)."""
        files: dict[str, Path | None] = {}
        for role, name in parts:
            if not name:
                files[role] = None  # the checkpoint's own
                continue
            kind = "vae" if role == "vae" else "text_encoder"
            try:
                files[role] = registry.resolve(kind, name, label="VAE" if kind == "vae" else "text encoder").path
            except ModelFileError:
                return f"no {'VAE' if kind == 'vae' else role + ' text encoder'} '{name}' here"
        try:
            stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime) for p in (path, *filter(None, files.values())))
            key = (family_name, tuple(sorted(files)), stats)
            if key not in self._footprints:
                self._footprints[key] = footprint(family_name, path, files)
            return self._footprints[key]
        except (ModelFileError, OSError) as e:
            log.debug("cannot weigh %s: %s", path, e)
            return None

    def depot_footprint(self, record, parts: tuple[tuple[str, str], ...], registry: Registry,
                        cache) -> Footprint | None:
        """What a render of a checkpoint only the depot has would hold here (farm/vram.py), from
        its record's weights and each named part's file here, else the part's depot record (at
        its size when that does not say); None when a part is in neither (not weighed: the fetch
        says what is missing)."""
        given: dict[str, Weights] = {}
        for role, name in parts:
            if not name:
                continue  # the checkpoint's own: in its record
            kind = "vae" if role == "vae" else "text_encoder"
            try:
                given[role] = file_weights(registry.resolve(kind, name).path)
                continue
            except (ModelFileError, OSError):
                pass
            part = cache.lookup(kind, name, None)
            if part is None:
                return None
            given[role] = part.held().get("file", Weights(part.size, "?"))
        return assemble(record.family, record.held(), given)

    def refresh(self, force: bool = True) -> None:
        """Recompute the queue order. Unless forced, skipped while the first queue in the order
        is the loaded checkpoint's and still holds work: the next task comes from it whatever the
        rest of the order is, and one Redis call is cheaper than the dozen a full look takes (a
        tiny render lasts tens of milliseconds)."""
        self.work_waiting = None
        if self.consumer is None:
            return
        if self.pause is not None and self.pause.reason:  # stepping aside: take no new task
            if self.order:
                self.apply([])
            self.ctx.next_checkpoint = ""
            self.ledger.announce(self.ctx.name, self.ctx.loaded_checkpoint, "", [])
            return
        if not force and self.order and self.routes_seen.get(self.order[0]) == self.ctx.loaded_checkpoint:
            if self.ledger.queue_lengths(self.order[:1])[self.order[0]] >= 2:
                self.work_waiting = True
                return
        routes = self.ledger.routes()
        self.routes_seen = {q: r.checkpoint for q, r in routes.items()}
        caps = self.capabilities(routes)
        mine = {q: r for q, r in routes.items() if caps.why_not(r) is None}
        self.serves = set(mine)
        pending = self.ledger.queue_lengths(list(mine))
        others: dict[str, int] = {}  # checkpoint -> other workers on it or heading to it
        served: dict[str, int] = {}  # queue -> other workers reading it with its checkpoint loaded
        holders: dict[str, int] = {}  # checkpoint -> other workers that have it (no fetch needed)
        for w in self.ledger.workers():
            if w.get("name") == self.ctx.name:
                continue
            for ckpt in [] if w.get("paused") else json.loads(w.get("holds") or "[]"):
                holders[ckpt] = holders.get(ckpt, 0) + 1
            for ckpt in {w.get("checkpoint"), w.get("next")} - {None, ""}:
                others[ckpt] = others.get(ckpt, 0) + 1
            for queue in json.loads(w.get("queues") or "[]"):
                if queue in routes and routes[queue].checkpoint == w.get("checkpoint"):
                    served[queue] = served.get(queue, 0) + 1
        ctx = self.ctx
        render_s = ctx.render_seconds / ctx.images_done if ctx.images_done else 0.0
        load_s = ctx.load_seconds / ctx.loads if ctx.loads else 0.0
        order = queue_order(mine, pending, ctx.loaded_checkpoint or None, others, ctx.name, render_s, load_s,
                            served, caps.fetchable, holders, loaded_refiner=ctx.loaded_refiner)
        self.ctx.next_checkpoint = next_checkpoint(order, mine, pending, self.ctx.loaded_checkpoint) or ""
        # Tell the others now, not at the next heartbeat: they are choosing at the same moment.
        if order != self.order:
            self.apply(order)
        self.work_waiting = any(pending.get(q, 0) for q in self.order)
        self.ledger.announce(ctx.name, ctx.loaded_checkpoint, ctx.next_checkpoint, self.order)

    def apply(self, order: list[str]) -> None:
        """Read exactly these queues in this order. kombu appends a re-added queue at the end, so
        the order is rebuilt from scratch (a few Redis calls, only when the order changes)."""
        for queue in self.order:
            self.consumer.cancel_task_queue(queue)
        for queue in order:
            self.consumer.add_task_queue(queue)
        log.debug("reading queues: %s", ", ".join(order) or "(none)")
        self.order = order


_steering: Steering | None = None


class _SteeringStep(bootsteps.StartStopStep):
    """Hands the consumer to the steering once it is ready to consume."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, consumer) -> None:
        if _steering is not None:
            _steering.consumer = consumer
            _steering.refresh()


def _after_task(task=None, **_kw) -> None:
    if _steering is not None:
        try:  # a wake-up (new work, or the idle poke) always looks; after a render, when needed
            _steering.refresh(force=getattr(task, "name", "") == REFRESH_TASK)
        except Exception as e:  # Redis away for a moment: keep the old order
            log.warning("could not update queue order: %s", e)


def install(app: Celery, steering: Steering) -> None:
    global _steering
    _steering = steering
    app.steps["consumer"].add(_SteeringStep)
    signals.task_postrun.connect(_after_task, weak=False)  # also runs after the refresh task

    @app.task(name=REFRESH_TASK)
    def refresh() -> None:
        pass
