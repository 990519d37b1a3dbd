"""A stand-in renderer for benchmarks of the farm itself (queueing, routing, stores), not of
diffusion: set FARM_STANDIN="LOAD_SECONDS,RENDER_SECONDS" on a worker and every checkpoint
"load" sleeps LOAD_SECONDS and every image "render" sleeps RENDER_SECONDS and yields a gray
noise image. Everything else (Redis, the task body, the render loop, the store, the ledger) is the
real thing: StandinModels offers the render loop what worker.prepare.TaskModels offers.
"""

from __future__ import annotations

import contextlib
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


class StandinModels:
    """The renderer of a stand-in worker (see worker.prepare.TaskModels for the real one)."""

    def __init__(self, load_seconds: float, render_seconds: float, profile=None):
        from worker.memory import choose_profile

        self.load_seconds = load_seconds
        self.render_seconds = render_seconds
        self.profile = profile or choose_profile()

    def load(self, path: Path) -> StandinPipeline:
        time.sleep(self.load_seconds)
        return StandinPipeline(self.render_seconds)

    def max_batch(self, pipe: StandinPipeline, task) -> int:
        return 1  # it sleeps per image: batching it would only delay results

    def prepared(self, pipe: StandinPipeline, tasks: list):
        return contextlib.nullcontext((tasks, [{} for _ in tasks]))  # no VAE, LoRAs or embeddings

    def render(self, pipe: StandinPipeline, kind, slots: list) -> list[Image.Image]:
        return pipe.render(slots)  # any kind: a stand-in image


def standin_models(profile=None) -> StandinModels | None:
    """The stand-in renderer when FARM_STANDIN is set, else None."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    load_seconds, render_seconds = (float(x) for x in spec.split(","))
    return StandinModels(load_seconds, render_seconds, profile)
