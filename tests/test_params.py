"""farm/params.py: the one table of render parameters, and what is derived from it."""

from __future__ import annotations

from farm.spec.inpaint import INPAINT_KEYS
from farm.params import (
    HIRES_KEYS,
    ALIASES, AXIS_ORDER, BATCH_FIELDS, BY_KEY, DEFAULTS, IN_ID_UNLESS_DEFAULT, PARAMS, axis_title, filename_token,
)
from farm.task import RenderTask
from farm.upscale import UPSCALE_KEYS
from factories import make_task


def _task(**changes) -> RenderTask:
    return make_task(**{"prompt": "a fox", "negative_prompt": "", "seed": 1, "checkpoint": "m",
                        "sampler": "Euler a", "steps": 3, **changes})


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


# The grid labels the sheets gave before the table (sheets already drawn keep them).
GRID_LABELS = {
    "checkpoint": "Checkpoint", "vae": "Vae", "lora": "Lora", "lora_weight": "Lora weight", "size": "Size",
    "width": "Width", "height": "Height", "sampler": "Sampler", "schedule": "Schedule type", "steps": "Steps",
    "clip_skip": "Clip skip", "cfg": "CFG scale", "rng": "Rng", "seed_resize_from": "Seed resize from",
    "variation_strength": "Variation strength", "negative_prompt": "Negative prompt", "prompt": "Prompt",
    "prompt_sr": "Prompt S/R", "variation_seed": "Variation seed", "seed": "Seed",
    "matrix_x": "Prompt matrix", "matrix_y": "Prompt matrix",
}


def test_axis_titles_are_the_grids_labels():
    assert {axis: axis_title(axis) for axis in GRID_LABELS} == GRID_LABELS
    new_axes = {"eta", "ensd", "distilled_cfg", "shift", "denoising_strength", *HIRES_KEYS, "init_images", "resize_mode",
                *UPSCALE_KEYS, "outpaint", *INPAINT_KEYS, "refiner", "refiner_switch_at"}
    assert set(AXIS_ORDER) - set(GRID_LABELS) == new_axes


def test_eta_and_ensd_labels_and_filename_tokens():
    assert (axis_title("eta"), axis_title("ensd"), axis_title("cfg")) == ("Eta", "ENSD", "CFG scale")
    assert filename_token("cfg")(_task(cfg=7.5), 1) == "7.5" and filename_token("nope") is None
    assert filename_token("sampler")(_task(sampler="DPM++ 2M", schedule="Karras"), 1) == "DPM++ 2M Karras"
    assert BY_KEY["eta"].in_batch_key and BY_KEY["ensd"].in_batch_key
