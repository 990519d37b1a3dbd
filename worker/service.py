"""`farm worker`: one Celery worker process per GPU, consuming render tasks from Redis.

Pool: solo (one task at a time, in this process), on Linux and Windows alike. Celery's prefork
pool does not work on Windows, and with one GPU per process there is nothing to run in parallel.
A busy solo worker does not answer Celery's pings, so liveness comes from our own heartbeat
thread (farm workers), not from Celery's control channel.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from celery.signals import worker_init, worker_shutting_down

from farm.celery_app import REFRESH_TASK, make_app
from farm.config import FarmSettings
from farm.ledger import BrokerUnreachable, Ledger, connect, safe_url
from farm.guard import Policy
from farm.messages import requeue_orphans, worker_queue
from farm.models import human_size
from farm.depot import Depot
from farm.store.urls import open_store, store_trusted
from farm.tunables import DEFAULT_CACHE_BYTES
from farm.tunables import HEARTBEAT_SECONDS, REAP_SECONDS
from worker import backups, steering, tasks
from worker.context import WorkerContext, configure
from worker.model_cache import CacheConfigError, ModelCache, default_cache_dir
from worker.pause import PausePolicy, make_gate
from worker.pause import tick as pause_tick

log = logging.getLogger("seedfarm.worker")


def device_info() -> dict:
    """What `farm workers` shows about this process's GPU."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"gpu": props.name, "vram_gb": f"{props.total_memory / 2**30:.1f}"}
    return {"gpu": "cpu", "vram_gb": "0"}


def heartbeat_loop(ledger: Ledger, ctx: WorkerContext, static: dict, stop: threading.Event,
                   poke=lambda: None, reap=lambda: None, pause=None) -> None:
    next_reap = time.monotonic() + REAP_SECONDS
    while not stop.is_set():
        current = ctx.current_task
        info = {
            **static,
            "checkpoint": ctx.loaded_checkpoint,
            "loaded_as": ctx.loaded_as,
            "next": ctx.next_checkpoint,
            "loads": ctx.loads,
            "load_seconds": f"{ctx.load_seconds:.1f}",
            "images_done": ctx.images_done,
            "speeds": ctx.speeds.to_json(),  # seconds per image (farm/speeds.py)
            "task": f"{current.job}/{current.id}" if current else "",
            "download": ctx.download,  # a model being fetched from the depot: NAME 45% 80 MB/s
            "holds": json.dumps(ctx.holds),  # checkpoints here (folders and cache), for others' routing
        }
        try:
            if pause is not None:  # why this worker takes no task now, "" when it does (worker/pause.py)
                info["paused"] = pause_tick(pause, ctx)
            ledger.heartbeat(ctx.name, info)
            if current is None:
                poke()  # an idle worker re-reads the queues now and then: new work, dead peers
            if time.monotonic() >= next_reap:
                next_reap = time.monotonic() + REAP_SECONDS
                reap()
        except Exception as e:  # Redis away for a moment: Celery's own reconnect logs it too
            log.debug("heartbeat failed: %s", e)
        stop.wait(HEARTBEAT_SECONDS)


def wait_for_redis(url: str):
    """A Redis client, once Redis answers: a PC may start before the box that runs Redis, so the
    worker waits (and says so) instead of giving up. Ctrl+C stops the wait."""
    delay = 1.0
    while True:
        try:
            return connect(url)
        except BrokerUnreachable as e:
            log.warning("%s; retrying in %.0f s", e, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def message_policy(settings: FarmSettings, store_override: str | None) -> Policy:
    """What this worker accepts from its queues (farm/guard.py): with --store it writes only there
    whatever a message names; otherwise only into its own `store` and its `trusted_stores`."""
    if store_override:
        return Policy(settings.max_message_bytes, lambda url: True)
    trusted = [settings.store, *settings.trusted_stores]
    return Policy(settings.max_message_bytes, lambda url: store_trusted(url, trusted))


def open_model_cache(folder: str | None, size: int, depot_url: str | None) -> ModelCache:
    """The model cache of --model-cache (default: the user's cache folder) and --cache-size,
    fetching from the depot in the store `depot_url` (None: from models' URLs only); `farm worker`
    and `farm run` open theirs here."""
    try:
        return ModelCache(Path(folder) if folder else default_cache_dir(), size,
                          Depot(open_store(depot_url)) if depot_url else None)
    except (ValueError, OSError) as e:
        raise CacheConfigError(f"model cache or depot: {e} (--model-cache, --depot)") from None


def run_worker(settings: FarmSettings, name: str | None, gpu: int | None, store_override: str | None,
               loglevel: str = "INFO", max_pixels: int | None = None, tags: frozenset[str] = frozenset(),
               max_batch: int | None = None, model_cache: str | None = None,
               cache_size: int = DEFAULT_CACHE_BYTES, depot_url: str | None = None,
               backup_renders: bool = True) -> int:
    if gpu is not None:
        # Before torch is imported: this process sees only its own GPU, as device 0.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    name = name or settings.worker_name or f"{socket.gethostname()}-gpu{gpu or 0}"
    models = Path(settings.models)
    for root in settings.models.split(os.pathsep):  # several roots may be joined by os.pathsep
        if not Path(root).is_dir():
            raise FileNotFoundError(f"models folder {root} does not exist (--models / FARM_MODELS)")

    from worker.memory import choose_profile

    policy = PausePolicy.from_settings(settings)  # a bad --hours fails here, before anything starts

    # CUDA_VISIBLE_DEVICES already narrows this process to its GPU: it is device 0 here.
    profile = choose_profile(settings.vram, settings.precision, settings.attention, settings.no_half_vae)
    # Models this PC lacks come from the depot (the farm's store unless --depot) into the model
    # cache, a models folder of its own searched after the user's (worker/model_cache.py).
    cache = open_model_cache(model_cache, cache_size, depot_url or store_override or settings.store)
    models = Path(f"{settings.models}{os.pathsep}{cache.root}")
    ledger = Ledger(wait_for_redis(settings.broker_url))
    ctx = configure(models, name=name, profile=profile, allow_pickle=settings.allow_pickle,
                          max_batch=max_batch, model_cache=cache)
    cache.report = lambda text: setattr(ctx, "download", text)
    import worker.pipelines  # noqa: F401  (quiets transformers' import-time notices)
    import diffusers  # noqa: F401  (seconds to import: paid here, not by the first task)

    static = {"name": name, "host": socket.gethostname(), "pid": os.getpid(), "life": ctx.life,
              "max_batch": max_batch or "auto", **device_info(), **profile.as_info()}
    log.info("worker %s: %s, %s GB VRAM, models %s, broker %s", name, static["gpu"], static["vram_gb"],
             models, safe_url(settings.broker_url))
    log.info("memory profile: %s; pickled model files %s", profile.describe(),
             "allowed (weights only)" if settings.allow_pickle else "refused")
    log.info("stepping aside: %s", policy.describe())
    log.info("model cache %s (up to %s), fetching from the depot in %s", cache.root,
             human_size(cache.limit), cache.depot.describe())
    gate = make_gate(policy, gpu, remote=lambda: ledger.pause_request(name))
    gate.check()  # before the consumer starts: a worker started paused takes no first task

    app = make_app(settings.broker_url, settings.visibility_timeout, settings.restore_interval,
                   policy=message_policy(settings, store_override))
    tasks.register(app, ledger=ledger, store_override=store_override)
    # First Ctrl+C: finish the diffusion batch in progress, store it, hand the group's rest back.
    worker_shutting_down.connect(lambda **_: setattr(ctx, "stopping", True), weak=False)
    home = worker_queue(name)
    vram = float(static["vram_gb"]) if static["gpu"] != "cpu" else None
    steer = steering.Steering(ledger, ctx, models, vram, max_pixels, tags, home,
                              # --vram auto: a model that needs it is offloaded more
                              mode="low" if profile.auto else profile.vram, dtype=profile.precision, pause=gate)
    steering.install(app, steer)
    if backup_renders:  # after the steering's own look at the queues (--no-backups: never)
        from celery import signals

        backups.install(signals, backups.Backups(app, ledger, ctx, steer, home))
    static["tags"] = ",".join(sorted(tags))
    stop = threading.Event()
    # The refresh itself runs in the worker's own thread, after a no-op task sent to itself.
    poke = lambda: app.send_task(REFRESH_TASK, queue=home, expires=30)  # noqa: E731
    for logger in ("celery.worker.strategy", "celery.app.trace"):  # no log line per wake-up
        logging.getLogger(logger).addFilter(lambda record: REFRESH_TASK not in record.getMessage())

    def reap() -> None:  # also the time to forget routes unused for an hour
        for task in requeue_orphans(app, ledger):
            log.warning("re-queued %s: its worker stopped before storing its images", task)
        ledger.prune_routes()

    beat = threading.Thread(target=heartbeat_loop, args=(ledger, ctx, static, stop, poke, reap, gate),
                            daemon=True)
    beat.start()
    # Celery's worker_main and start both drop the worker's exit code, so a worker stopped by an
    # "Unrecoverable error" exited 0 and a supervisor did not restart it: keep the controller and
    # read its exit code.
    controllers, signals = [], []
    worker_init.connect(lambda sender=None, **_: controllers.append(sender), weak=False)
    # Celery gives a Ctrl+C/SIGTERM shutdown exit code 1 too: a stop someone asked for is 0
    worker_shutting_down.connect(lambda sig=None, **_: signals.append(sig), weak=False)
    try:
        app.worker_main(argv=[
            "worker", "--pool", "solo", "--concurrency", "1", "--hostname", f"{name}@%h", "--queues", home,
            "--loglevel", loglevel, "--without-mingle", "--without-gossip",
        ])
        if signals and signals[-1] in ("SIGINT", "SIGTERM", "SIGQUIT"):
            return 0
        return (controllers[-1].exitcode or 0) if controllers else 0
    finally:
        ctx.writer.close()  # a warm shutdown stores every rendered image before the process ends
        stop.set()
        try:
            ledger.forget_worker(name)
        except Exception:
            pass
