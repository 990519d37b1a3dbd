"""Task kinds: what a task asks the worker to make (RenderTask.kind). txt2img, hires (A1111's
hires fix), img2img, inpaint (with outpaint) and upscale (A1111's Extras).

A kind is one module here with

    def render(pipe, slots: list[worker.render.Slot]) -> list[PIL.Image.Image]

(the images of tasks with equal batch keys, in the order of `slots`; RenderError for a bad
prompt or output; a slot's input images, e.g. img2img's init image, are in `slot.inputs`), plus a
line in KINDS. Its parameters are rows in the parameter table. A kind that needs no diffusion
pipeline (upscale) says `PIPELINE = False`: it gets `pipe` None, one image at a time, and writes
its PNG texts itself (`png_texts(task, seed, image, extra)`).
"""

from __future__ import annotations

from types import ModuleType

from farm.task import RenderTask
from worker.context import TaskError
from worker.kinds import hires, img2img, inpaint, txt2img, upscale

KINDS: dict[str, ModuleType] = {"txt2img": txt2img, "hires": hires, "img2img": img2img, "inpaint": inpaint,
                                "upscale": upscale}


def kind_of(task: RenderTask) -> ModuleType:
    """The module that renders this task's kind; TaskError (one line) for a kind this worker lacks."""
    if task.kind not in KINDS:
        raise TaskError(f"task kind '{task.kind}' is not one this worker renders ({', '.join(KINDS)}); "
                        "update seedfarm on this worker")
    return KINDS[task.kind]
