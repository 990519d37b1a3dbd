"""The one RenderTask factory of the tests: a 64x64, 2-step task on the built-in tiny checkpoint.

Tests override only the fields they are about; everything else is a valid task, with its id.
"""

from __future__ import annotations

from farm.task import RenderTask

TASK_DEFAULTS = dict(
    job="test", index=0, prompt="a red robot", negative_prompt="blurry", seed=7,
    checkpoint="seedfarm-tiny", sampler="Euler", steps=2, cfg=7.0, width=64, height=64,
)


def make_task(**overrides) -> RenderTask:
    return RenderTask(**{**TASK_DEFAULTS, **overrides}).with_id()
