"""Queue messages, the one module both the coordinator and the workers import to put tasks on the
queues: which queue a task goes to (its Route), the message that carries a group of tasks
(`send`), and the reaper that puts back the tasks of dead workers (`requeue_orphans`).

Tasks are published to one queue per route: priority, checkpoint, pixels per render and required
tags. Each worker reads only the queues it can serve, in an order it chooses itself
(worker/queue_order.py), plus its own queue (`worker_queue`), which receives the wake-ups.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from functools import cached_property

from farm.celery_app import RENDER_TASK
from farm.params import refines
from farm.task import RenderTask

PRIORITIES = {"high": 0, "normal": 1, "low": 2}
QUEUE_PREFIX = "farm."


def worker_queue(name: str) -> str:
    """Each worker's own queue, always read first: it receives the wake-up after new work."""
    return f"{QUEUE_PREFIX}worker.{name}"


@dataclass(frozen=True)
class Route:
    """What a worker must offer to render a task."""

    priority: str  # high | normal | low
    checkpoint: str
    checkpoint_hash: str | None
    pixels: int  # width * height * batch size: what decides the memory a render needs
    tags: tuple[str, ...] = ()
    # A family built from parts: ((role, file name), ...) of its text encoders and VAE ("" for a part
    # the checkpoint holds), so a worker can weigh the files the render holds (farm/vram.py); () for
    # SD1.5/SDXL, whose queue names are therefore those they always had; (("refiner", NAME),) for an
    # SDXL render with a refiner.
    parts: tuple[tuple[str, str], ...] = ()
    # A checkpoint the spec gives by URL (farm/spec/models.py): a worker lacking it may fetch it from
    # there (worker/steering.py); "" for one named only
    url: str = ""

    def _fields(self) -> dict:
        data = asdict(self)
        if not self.parts:  # left out at its default: the queue names of existing routes stay
            del data["parts"]
        if not self.url:
            del data["url"]
        return data

    @cached_property  # publishing asks for it once per task
    def queue(self) -> str:
        """A queue name people can read in redis-cli, unique per route."""
        digest = hashlib.sha1(json.dumps(self._fields(), sort_keys=True).encode()).hexdigest()[:8]
        # a checkpoint may be `sub/name`, `org/name` or hold spaces: readable, not verbatim (the digest
        # keeps names unique)
        name = re.sub(r"[^\w.-]+", "_", self.checkpoint)
        return f"{QUEUE_PREFIX}{PRIORITIES[self.priority]}.{name}.{self.pixels}.{digest}"

    def to_json(self) -> str:
        return json.dumps(self._fields(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Route":
        data = json.loads(text)
        data["tags"] = tuple(data.get("tags", ()))
        data["parts"] = tuple(tuple(p) for p in data.get("parts", ()))
        return cls(**data)


def route_of(task: RenderTask, priority: str = "normal", tags: tuple[str, ...] = ()) -> Route:
    """The route of a task's queue (a group of tasks with equal batch keys shares it: text encoders
    and VAE are in the batch key)."""
    parts = (*sorted(task.text_encoders.items()), ("vae", task.vae)) if task.text_encoders else ()
    url = task.model_urls.get(f"checkpoint:{task.checkpoint}", ("", ""))[1]
    if refines(task):  # an SDXL refiner: only workers that have it, preferably those holding it
        parts += (("refiner", task.refiner),)
    return Route(priority, task.checkpoint, task.checkpoint_hash, task.width * task.height * task.batch_size, tags,
                 parts, url)


def send(app, tasks: list[RenderTask], store_url: str, queue: str, producer=None) -> None:
    """One message: a group of tasks. argsrepr is what logs and monitors show; Celery's own repr of
    the payload would cost more than everything else in the publish loop together."""
    first = tasks[0]
    more = f"+{len(tasks) - 1}" if len(tasks) > 1 else ""
    app.send_task(RENDER_TASK, args=[[t.model_dump() for t in tasks], store_url], producer=producer,
                  task_id=f"{first.job}:{first.id}{more}", queue=queue,
                  argsrepr=f"[{first.job} #{first.index}{more}]", kwargsrepr="{}")


def requeue_orphans(app, ledger) -> list[str]:
    """The reaper: put back on their queues the tasks held by workers that stopped beating (switched
    off after their message was acked, while the images were still being stored; or mid-render,
    sooner than the broker's visibility timeout would). A duplicate is harmless: tasks are
    idempotent. `ledger`: the farm.ledger.Ledger (not imported here: the ledger stores Routes).
    Returns "job/task" of each task re-queued."""
    requeued = []
    for job, task_id, held in ledger.orphans():
        if not ledger.claim_orphan(job, task_id):
            continue
        task = RenderTask.from_json(held["task"])
        queue = held["queue"] or route_of(task).queue
        send(app, [task], held["store"], queue)
        ledger.release_orphan(job, task_id, held["life"])
        requeued.append(f"{job}/{task_id}")
    return requeued
