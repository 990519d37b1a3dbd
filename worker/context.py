"""What one worker process knows (its models folder, name, loaded pipelines, running averages), the
one context of this process, and the error for a task it cannot render.

`farm worker` (worker/service.py) and `farm run` (worker/local.py) each configure it once; the
render loop (worker/render_loop.py) and the Celery task (worker/tasks.py) read it.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from farm.checkpoints import resolve_checkpoint
from farm.hashes import sha256_file
from farm.params import refines
from farm.speeds import Speeds
from farm.task import RenderTask
from worker.writer import ImageWriter


class TaskError(Exception):
    """A task that cannot render on this worker, with a reason a person can act on."""


@dataclass
class WorkerContext:
    """What one worker process knows: where its models are, its name, its loaded pipelines."""

    models_dir: Path
    name: str = field(default_factory=socket.gethostname)
    cache: object = None  # worker.pipelines.PipelineCache, created on first use (imports torch)
    images_done: int = 0
    current_task: RenderTask | None = None
    loaded_checkpoint: str = ""
    loaded_refiner: str = ""  # the SDXL refiner loaded with it ("" none)
    loaded_as: str = ""  # how it sits here: stored precision, compute dtype, memory mode
    next_checkpoint: str = ""  # where this worker goes when its checkpoint's work runs out
    loads: int = 0
    load_seconds: float = 0.0
    render_seconds: float = 0.0  # total, for the average cost of an image here
    speeds: Speeds = field(default_factory=Speeds)  # seconds per image by speed key (farm/speeds.py)

    allow_pickle: bool = False  # read pickled .ckpt/.pt model files (weights-only) too
    profile: object = None  # worker.memory.MemoryProfile; None: chosen from the hardware
    # The renderer: worker.prepare.TaskModels (diffusers), or worker.standin.StandinModels when
    # FARM_STANDIN is set; created with the cache. The render loop uses only its load, max_batch,
    # prepared and render.
    task_models: object = None
    max_batch: int | None = None  # images per diffusion call; None: the renderer picks (VRAM, size)
    batch_limits: dict = field(default_factory=dict)  # (checkpoint, w, h) -> max batch after running out of memory
    writer: ImageWriter = field(default_factory=ImageWriter)  # stores images while the next renders
    on_finished: Callable | None = None  # `farm run`: told of each finished task (see worker/tasks.py)
    stopping: bool = False  # set by a warm shutdown (Ctrl+C): stop between diffusion batches
    life: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # this process, for the reaper
    # worker.model_cache.ModelCache: fetches pinned models this PC lacks from the depot (None: never)
    model_cache: object = None
    download: str = ""  # the fetch in progress, "NAME 45% 80 MB/s", for `farm workers`
    holds: list[str] = field(default_factory=list)  # checkpoints of live routes this worker has (steering)

    def pipelines(self):
        if self.cache is None:
            from worker.pipelines import PipelineCache
            from worker.prepare import TaskModels
            from worker.standin import standin_models

            # benchmarks of the farm itself swap diffusion for sleeps (worker/standin.py)
            self.task_models = (standin_models(self.profile)
                                or TaskModels(self.models_dir, self.profile, self.allow_pickle))
            self.profile = self.task_models.profile
            self.cache = PipelineCache(loader=self.task_models.load)
        return self.cache


_context: WorkerContext | None = None


def configure(models_dir: Path, name: str | None = None, **options) -> WorkerContext:
    """options: WorkerContext fields such as allow_pickle and profile."""
    global _context
    if _context is not None:
        _context.writer.close()  # its thread; what it still holds is stored first
    _context = WorkerContext(models_dir=Path(models_dir), **({"name": name} if name else {}), **options)
    return _context


def context() -> WorkerContext:
    if _context is None:
        raise RuntimeError("worker not configured: call worker.context.configure(models_dir) first")
    return _context


def model_files(task: RenderTask, models_dir: Path):
    """The files the task's pipeline is built from (worker.families.ModelFiles): its checkpoint
    and, for a family built from parts, each part named in the task, checked against the hashes
    the job was expanded with."""
    from farm.models import Registry
    from worker.families import ModelFiles

    checkpoint = checkpoint_path(task, models_dir)
    if refines(task):  # the refiner checkpoint is held with it, in the same cache entry
        refiner = checkpoint_path(task.model_copy(update={"checkpoint": task.refiner,
                                                          "checkpoint_hash": task.refiner_hash}), models_dir)
        return ModelFiles(checkpoint, (("refiner", refiner),))
    if not task.text_encoders:
        return ModelFiles(checkpoint)
    registry = Registry(models_dir)
    parts = [(role, "text_encoder", name, task.part_hashes.get(role)) for role, name in task.text_encoders.items()]
    parts.append(("vae", "vae", task.vae, task.vae_hash))
    resolved = []
    for role, kind, name, expected in parts:
        if not name:  # the checkpoint holds this part itself
            resolved.append((role, None))
            continue
        try:
            path = registry.resolve(kind, name, label="text encoder" if kind == "text_encoder" else "VAE").path
        except ValueError as e:
            path = pinned_file(kind, expected, models_dir)
            if path is None:
                raise TaskError(str(e)) from None
        if expected and sha256_file(path) != expected:
            path = pinned_file(kind, expected, models_dir) or path
        if expected and sha256_file(path) != expected:
            raise TaskError(f"{role} '{name}' at {path} has hash {sha256_file(path)[:10]}, but the job was expanded "
                            f"against {expected[:10]}: copy the same file to this worker")
        resolved.append((role, path))
    return ModelFiles(checkpoint, tuple(resolved))


def checkpoint_path(task: RenderTask, models_dir: Path) -> Path:
    """The local file for the task's checkpoint; refuses a same-named file with other weights."""
    try:
        path = resolve_checkpoint(task.checkpoint, models_dir)
    except ValueError as e:
        from worker.pipelines import ModelLoadError, hub_folder

        try:  # a hub id (org/name) in no models folder: the Hugging Face cache's copy
            path = pinned_file("checkpoint", task.checkpoint_hash, models_dir) or hub_folder(
                task.checkpoint, models_dir, str(e))
        except ModelLoadError as error:
            raise TaskError(str(error)) from None
    if task.checkpoint_hash and sha256_file(path) != task.checkpoint_hash:
        path = pinned_file("checkpoint", task.checkpoint_hash, models_dir) or path
    if task.checkpoint_hash and sha256_file(path) != task.checkpoint_hash:
        raise TaskError(
            f"checkpoint '{task.checkpoint}' at {path} has hash {sha256_file(path)[:10]}, but the job "
            f"was expanded against {task.checkpoint_hash[:10]}: copy the same file to this worker"
        )
    return path


def pinned_file(kind: str, sha256: str | None, models_dir: Path) -> Path | None:
    """A file with this sha256 under another name, or beside a same-named file with other weights:
    the model cache's copy (worker/model_cache.py), else one of the models folders' files found by
    its hash (hashed once, then cached)."""
    if not sha256:
        return None
    cache = _context.model_cache if _context is not None else None
    found = cache.cached(sha256) if cache is not None else None
    if found is not None:
        return found
    from farm.model_files import ModelFileError
    from farm.models import Registry

    try:
        return Registry(models_dir).resolve(kind, sha256).path
    except ModelFileError:
        return None
