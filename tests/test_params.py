"""farm/params.py: the one table of render parameters, and what is derived from it."""

from __future__ import annotations

import pytest

from farm import grid
from farm.params import (
    ALIASES, AXIS_ORDER, BATCH_FIELDS, BY_KEY, DEFAULTS, IN_ID_UNLESS_DEFAULT, PARAMS, axis_title, filename_token,
)
from farm.task import RenderTask


def _task(**changes) -> RenderTask:
    fields = dict(job="j", index=0, prompt="a fox", seed=1, checkpoint="m", sampler="Euler a", steps=3, cfg=7.0,
                  width=64, height=64)
    return RenderTask(**(fields | changes))


def test_every_row_names_real_task_fields_and_unique_keys():
    fields = set(RenderTask.model_fields)
    assert all(set(p.fields) <= fields for p in PARAMS)
    keys = [p.key for p in PARAMS] + list(ALIASES)
    assert len(keys) == len(set(keys))
    assert set(DEFAULTS) <= set(AXIS_ORDER) and set(BATCH_FIELDS) <= fields


def test_new_fields_at_their_default_stay_out_of_the_id():
    assert {"eta", "ensd", "kind"} <= IN_ID_UNLESS_DEFAULT
    plain = _task().with_id().id
    assert _task(eta=None, ensd=0, kind="txt2img").with_id().id == plain
    for change in ({"eta": 0.5}, {"ensd": 31337}, {"kind": "img2img"}):
        assert _task(**change).with_id().id != plain, change


@pytest.mark.parametrize("axis", [*AXIS_ORDER, "matrix_x", "matrix_y"])
def test_axis_titles_are_the_grids(axis):
    """The lead points farm/grid.py at axis_title; until then both must agree (new axes aside)."""
    if axis not in ("eta", "ensd"):
        assert axis_title(axis) == grid.axis_title(axis)


def test_eta_and_ensd_labels_and_filename_tokens():
    assert (axis_title("eta"), axis_title("ensd"), axis_title("cfg")) == ("Eta", "ENSD", "CFG scale")
    assert filename_token("cfg")(_task(cfg=7.5), 1) == "7.5" and filename_token("nope") is None
    assert filename_token("sampler")(_task(sampler="DPM++ 2M", schedule="Karras"), 1) == "DPM++ 2M Karras"
    assert BY_KEY["eta"].in_batch_key and BY_KEY["ensd"].in_batch_key
