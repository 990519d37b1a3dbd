"""A stand-in renderer for benchmarks of the farm itself (queueing, routing, stores), not of
diffusion: set FARM_STANDIN="LOAD_SECONDS,RENDER_SECONDS" on a worker and every checkpoint
"load" sleeps LOAD_SECONDS and every image "render" sleeps RENDER_SECONDS and yields a gray
noise image. Everything else (Redis, the task body, the store, the ledger) is the real thing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from PIL import Image


ENV = "FARM_STANDIN"


class StandinPipeline:
    def __init__(self, render_seconds: float):
        self.render_seconds = render_seconds

    def render(self, slots: list) -> list[Image.Image]:
        """slots: worker.render.Slot, one per image (of tasks of one size)."""
        time.sleep(self.render_seconds * len(slots))
        task = slots[0].task
        # noise, so that PNG encoding costs at least what a real render's does
        return [Image.effect_noise((task.width, task.height), 40).convert("RGB") for _ in slots]


def standin_loader() -> "callable | None":
    """A loader for PipelineCache when FARM_STANDIN is set, else None."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    load_seconds, render_seconds = (float(x) for x in spec.split(","))

    def load(path: Path) -> StandinPipeline:
        time.sleep(load_seconds)
        return StandinPipeline(render_seconds)

    return load
