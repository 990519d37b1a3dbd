"""The worker's model families, one module each (sd15.py, sdxl.py): ask the family object of a
pipeline instead of asking "is this SDXL?".

    family = of_pipeline(pipe)      # from the pipeline's class
    family = named("SDXL")          # from a family name as farm/families.py spells it

Adding a family: its row in farm/families.py, a module here declaring FAMILY, and a line in
WORKER_FAMILIES.
"""

from __future__ import annotations

from worker.families import flux1, flux2, sd15, sd35, sdxl, sdxl_refiner, zimage
from worker.families.base import ModelFiles, PartsFamily, WorkerFamily

__all__ = ["ModelFiles", "PartsFamily", "WorkerFamily", "UnknownFamily", "WORKER_FAMILIES", "of_pipeline", "named"]

# A module of a family with several rows in farm/families.py (Flux.1 [dev] and [schnell]) declares
# FAMILIES, one WorkerFamily per row; the others declare FAMILY.
WORKER_FAMILIES: tuple[WorkerFamily, ...] = (sd15.FAMILY, sdxl.FAMILY, sdxl_refiner.FAMILY, *flux1.FAMILIES, *sd35.FAMILIES,
                                              *zimage.FAMILIES, *flux2.FAMILIES)


class UnknownFamily(ValueError):
    """A pipeline or family name this worker has no module for; one line."""


def of_pipeline(pipe) -> WorkerFamily:
    """The family of a loaded diffusers pipeline, from its class."""
    own = getattr(pipe, "seedfarm_family", None)  # set by a PartsFamily's load: one class, several rows
    if own is not None:
        return named(own)
    class_name = type(pipe).__name__
    for family in WORKER_FAMILIES:
        if class_name in family.pipeline_classes:
            return family
    raise UnknownFamily(f"no model family renders a {class_name}")


def named(name: str) -> WorkerFamily:
    """The family called `name` ("SD1.5", "SDXL")."""
    for family in WORKER_FAMILIES:
        if family.name == name:
            return family
    raise UnknownFamily(f"no worker module for the model family '{name}'")
