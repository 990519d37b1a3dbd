"""Job spec v1: loading, validation, errors with positions (farm/spec/)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from farm.spec import AXIS_ORDER, JobSpec, SpecError, load_spec, parse_spec
from farm.spec.inpaint import INPAINT_KEYS
from farm.params import HIRES_KEYS
from farm.upscale import UPSCALE_KEYS

ROOT = Path(__file__).resolve().parents[1]
BASE = "prompt: a robot\ncheckpoint: seedfarm-tiny\nseed: 1\n"


def spec(text: str, **kw) -> JobSpec:
    return parse_spec(text, "jobs/t.yaml", **kw)


def error_of(text: str, **kw) -> SpecError:
    with pytest.raises(SpecError) as e:
        parse_spec(text, "jobs/x.yaml", **kw)
    return e.value


# ---- the example jobs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, tasks, swept",
    [("demo", 8, ["sampler", "cfg", "seed"]), ("robots", 8, ["prompt", "prompt_sr"]), ("zip", 6, ["prompt", "seed", "cfg"])],
)
def test_example_jobs_load(name, tasks, swept):
    s = load_spec(ROOT / "jobs" / f"{name}.yaml")
    assert s.name == name
    assert s.task_count() == tasks == s.image_count()
    assert s.swept_axes() == swept
    assert s.values["checkpoint"] == ["seedfarm-tiny"]
    assert s.values["size"] == ["64x64"] and s.values["steps"] == [2]
    assert s.grid_x and s.grid_y and s.grid_x in s.values and s.grid_y in s.values


def test_packaged_demo_is_the_jobs_demo():
    packaged = ROOT / "farm" / "data" / "demo.yaml"
    assert packaged.read_text() == (ROOT / "jobs" / "demo.yaml").read_text()
    s = load_spec(packaged)
    assert (s.grid_x, s.grid_y) == ("cfg", "sampler")
    assert s.values["sampler"] == ["Euler a", "DPM++ 2M Karras"] and s.values["cfg"] == [5.0, 7.0]


# ---- keys, values, defaults -----------------------------------------------------------------------


def test_defaults_are_a1111s():
    s = spec(BASE)
    axes = s.axes()
    optional = ("width", "height", "prompt_sr", "vae", "lora", "lora_weight",  # no default: no axis
                "distilled_cfg", "shift",  # only for the families that use them
                "rng", "eta", "ensd", "seed_resize_from", "variation_strength", "variation_seed",
                "denoising_strength", *HIRES_KEYS,  # hires fix: only when asked for
                "init_images", "resize_mode",  # img2img likewise
                *UPSCALE_KEYS,  # the upscale kind
                "outpaint", *INPAINT_KEYS,  # inpaint
                "refiner", "refiner_switch_at")  # and the SDXL refiner
    assert list(axes) == [a for a in AXIS_ORDER if a not in optional]
    assert axes["sampler"] == ["DPM++ 2M"] and axes["schedule"] == ["Automatic"]
    assert axes["steps"] == [20] and axes["cfg"] == [7.0] and axes["size"] == ["512x512"]
    assert axes["clip_skip"] == [1] and axes["negative_prompt"] == [""]
    assert s.batch_size == 1 and s.filename == "[seed]-[task_id]"
    assert s.swept_axes() == [] and s.task_count() == 1
    assert s.source_text == BASE


def test_aliases_mean_the_canonical_keys():
    s = spec(
        "prompts: [a, b]\nnegative: ugly\nseeds: 1-2\ncheckpoints: [m1, m2.safetensors]\n"
        "samplers: Euler a, DPM++ 2M Karras\ncfg_scale: 6\n"
    )
    assert s.values["prompt"] == ["a", "b"] and s.values["negative_prompt"] == ["ugly"]
    assert list(s.values["seed"]) == [1, 2] and s.values["checkpoint"] == ["m1", "m2"]
    assert s.values["sampler"] == ["Euler a", "DPM++ 2M Karras"] and s.values["cfg"] == [6.0]


def test_numeric_axes_accept_ranges_lists_and_comma_strings():
    s = spec(BASE.replace("seed: 1", "seed: [1000-1002, 5000]") + "steps: 10-30 (+10)\ncfg: '5, 7.5'\nclip_skip: 1-2\n")
    assert list(s.values["seed"]) == [1000, 1001, 1002, 5000]
    assert list(s.values["steps"]) == [10, 20, 30]
    assert s.values["cfg"] == [5.0, 7.5] and list(s.values["clip_skip"]) == [1, 2]


def test_seed_mapping_and_big_ranges_stay_lazy():
    s = spec(BASE.replace("seed: 1", "seed: {start: 1000, count: 64}"))
    assert s.values["seed"] == range(1000, 1064)
    s = spec(BASE.replace("seed: 1", "seed: {start: 10, count: 3, step: 4}"))
    assert list(s.values["seed"]) == [10, 14, 18]
    s = spec(BASE.replace("seed: 1", "seed: 0-999999"))
    assert isinstance(s.values["seed"], range) and s.task_count() == 1_000_000


def test_samplers_and_schedules():
    s = spec(BASE + "sampler: [dpm++ 2m karras, Euler]\nschedule: [Automatic, karras]\n")
    assert s.values["sampler"] == ["DPM++ 2M Karras", "Euler"]
    assert s.values["schedule"] == ["Automatic", "Karras"]
    assert s.swept_axes() == ["sampler", "schedule"]


def test_size_and_width_height():
    s = spec(BASE + "size: [512x768, 640 X 640]\n")
    assert s.values["size"] == ["512x768", "640x640"]
    s = spec(BASE + "width: [64, 128]\nheight: 96\n")
    assert "size" not in s.values and s.values["width"] == [64, 128] and s.values["height"] == [96]
    assert s.swept_axes() == ["width"]
    assert spec(BASE + "height: 64\n").values["width"] == [512]


def test_prompt_matrix_follows_a1111_bits():
    s = spec("prompt: a robot|red|shiny, |in rain\nprompt_matrix: true\ncheckpoint: m\nseed: 1\n")
    assert list(s.values["prompt"]) == [
        "a robot", "a robot, red", "a robot, shiny", "a robot, red, shiny",
        "a robot, in rain", "a robot, red, in rain", "a robot, shiny, in rain", "a robot, red, shiny, in rain",
    ]
    # without prompt_matrix the bar is plain text
    assert spec("prompt: a|b\ncheckpoint: m\nseed: 1\n").values["prompt"] == ["a|b"]
    # several prompts: one matrix after another
    s = spec("prompt: [x|y, z]\nprompt_matrix: true\ncheckpoint: m\nseed: 1\n")
    assert list(s.values["prompt"]) == ["x", "x, y", "z"]


def test_prompt_sr_search_may_sit_in_the_negative_prompt():
    s = spec("prompt: [a cat, a dog]\nnegative_prompt: blurry\nprompt_sr: blurry, sharp\ncheckpoint: m\nseed: 1\n")
    assert s.values["prompt_sr"] == ["blurry", "sharp"] and s.prompt_sr_search == "blurry"
    s = spec(BASE + "prompt_sr: ['robot', 'cat, sitting']\n")  # a YAML list keeps commas
    assert s.values["prompt_sr"] == ["robot", "cat, sitting"]


def test_batch_size_multiplies_images():
    s = spec(BASE.replace("seed: 1", "seed: 1-3") + "batch_size: 4\n")
    assert s.task_count() == 3 and s.image_count() == 12 and s.batch_size == 4


def test_output_and_grid():
    s = spec(BASE.replace("seed: 1", "seeds: 1-2") + "cfg: [5, 7]\ngrid: {x: seeds, y: cfg}\noutput: {folder: my-run, filename: '[seed]-[cfg]'}\n")
    assert (s.grid_x, s.grid_y) == ("seed", "cfg")
    assert s.job_id == "my-run" and s.filename == "[seed]-[cfg]"


# ---- ordering and combine --------------------------------------------------------------------------


def test_default_order_puts_expensive_axes_outermost():
    s = spec(
        "seed: 1-2\nprompt: [a cat, b cat]\ncfg: [5, 7]\nsteps: [2, 3]\nsampler: [Euler, Euler a]\n"
        "size: [64x64, 128x64]\ncheckpoint: [m1, m2]\nclip_skip: [1, 2]\nnegative_prompt: [x, y]\nprompt_sr: [cat, dog]\n"
    )
    assert s.swept_axes() == [
        "checkpoint", "size", "sampler", "steps", "clip_skip", "cfg", "negative_prompt", "prompt", "prompt_sr", "seed",
    ]
    assert s.task_count() == 2**10
    assert s.combine_expression() == " * ".join(s.swept_axes())


def test_combine_sets_order_and_zips():
    s = spec("prompt: [a, b, c]\nseed: [1, 2, 3]\ncheckpoint: [m1, m2]\ncfg: [5, 7]\ncombine: '(prompt, seed) * checkpoint * cfg'\n")
    assert s.swept_axes() == ["prompt", "seed", "checkpoint", "cfg"]
    assert s.dims[-3:] == (("prompt", "seed"), ("checkpoint",), ("cfg",))
    assert s.task_count() == 3 * 2 * 2
    assert s.combine_expression() == "(prompt, seed) * checkpoint * cfg"
    # fixed axes left out of the expression still exist, outermost
    assert set(s.axes()) >= {"sampler", "steps", "size"} and s.dims[0] == ("size",)


def test_combine_accepts_aliases_and_fixed_axes():
    s = spec(BASE.replace("seed: 1", "seed: 1-2") + "combine: steps * seeds\n")
    assert s.swept_axes() == ["seed"] and s.task_count() == 2


# ---- job ids -----------------------------------------------------------------------------------------


def test_job_id_is_name_plus_content_hash():
    s = load_spec(ROOT / "jobs" / "demo.yaml")
    assert s.job_id.startswith("demo-") and len(s.job_id) == len("demo-") + 8
    assert int(s.job_id[5:], 16) >= 0
    assert load_spec(ROOT / "jobs" / "demo.yaml").job_id == s.job_id


def test_job_id_ignores_spelling_but_not_content():
    a = spec("prompt: a\ncheckpoint: m\nseed: 1-4\n")
    b = spec("# same job, other words\nprompts: [a]\ncheckpoints: m.safetensors\nseeds: [1, 2, 3, 4]\ngrid: {x: seed}\n")
    assert a.job_id == b.job_id
    assert spec("prompt: a\ncheckpoint: m\nseed: 1-5\n").job_id != a.job_id
    assert spec("prompt: a\ncheckpoint: m\nseed: 1-4\nbatch_size: 2\n").job_id != a.job_id
    assert spec("prompt: a\ncheckpoint: m\nseed: 1-4\nname: other\n").job_id == "other-" + a.job_id.split("-")[1]


def test_name_defaults_to_a_safe_file_stem():
    assert parse_spec(BASE, "jobs/my robots!.yaml").name == "my-robots"
    assert parse_spec(BASE).name == "spec"


def test_describe_lists_axes_and_counts():
    s = spec("prompt: a\ncheckpoint: m\nseed: 0-999\ncfg: [5, 7]\nbatch_size: 2\ngrid: {x: cfg}\n")
    text = "\n".join(s.describe())
    assert s.job_id in text
    assert "seed" in text and "1,000" in text and "0, 1, 2, ..., 999" in text
    assert "combine: cfg * seed" in text
    assert "tasks: 2,000  images: 4,000 (batch size 2)" in text
    assert "grid: x=cfg" in text


# ---- models folder ---------------------------------------------------------------------------------


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.setenv("FARM_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    (folder / "seedfarm-tiny.safetensors").write_bytes(b"tiny weights")
    return tmp_path / "models"


def test_checkpoints_resolve_in_the_models_folder(models):
    s = spec(BASE, models_dir=models)
    assert s.checkpoint_files["seedfarm-tiny"].name == "seedfarm-tiny.safetensors"
    assert s.checkpoint_hash("seedfarm-tiny") == hashlib.sha256(b"tiny weights").hexdigest()
    assert spec(BASE).checkpoint_hash("seedfarm-tiny") is None


def test_unknown_checkpoint_is_checked_only_with_a_models_folder(models):
    text = BASE.replace("checkpoint: seedfarm-tiny", "checkpoint: [seedfarm-tiny, seedfarm-tinny2]")
    assert spec(text).values["checkpoint"] == ["seedfarm-tiny", "seedfarm-tinny2"]
    e = error_of(text, models_dir=models)
    assert (e.line, e.col) == (2, 29)
    assert "unknown checkpoint 'seedfarm-tinny2'" in e.message and "did you mean 'seedfarm-tiny'" in e.message


# ---- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, line, col, message",
    [
        (BASE + "seedz: 5\n", 4, 1, "unknown key 'seedz' in the job spec (did you mean 'seed'?)"),
        (BASE + "cfg_scal: 5\n", 4, 1, "did you mean 'cfg_scale'?"),
        ("prompt: a\n\tseed: 1\n", 2, 1, "YAML syntax error"),
        ("prompt: [a, b\nseed: 1\n", 2, 5, "YAML syntax error"),
        ("prompt: a: b\n", 1, 10, "mapping values are not allowed here"),
        (BASE + "---\na: 1\n", 4, 1, "one YAML document"),
        ("", 1, 1, "the file is empty"),
        ("# only a comment\n", 1, 1, "the file is empty"),
        ("- a\n", 1, 1, "expected a mapping"),
        ("prompt: a\ncheckpoint: m\n", 1, 1, "missing key 'seed'"),
        ("prompt:\ncheckpoint: m\nseed: 1\n", 1, 8, "prompt: expected the prompt text, got nothing"),
        (BASE.replace("seed: 1", "seed: 1-x"), 3, 7, "seed: '1-x' is neither a number nor a range"),
        (BASE.replace("seed: 1", "seed: 10-1 (+2)"), 3, 7, "is empty: step +2 never reaches 1"),
        (BASE.replace("seed: 1", "seed: []"), 3, 7, "seed: the list is empty"),
        (BASE.replace("seed: 1", "seed:\n  - 1\n  - 2-x\n"), 5, 5, "seed: '2-x'"),
        (BASE.replace("seed: 1", "seed: -1"), 3, 7, "-1 'random' is not supported"),
        (BASE.replace("seed: 1", "seed: 1.5"), 3, 7, "seed: expected a whole number"),
        (BASE.replace("seed: 1", "seed: [1, 2, 1]"), 3, 7, "seed: the value 1 comes twice"),
        (BASE.replace("seed: 1", "seed: {start: 5}"), 3, 7, "seed: missing 'count'"),
        (BASE.replace("seed: 1", "seed: {start: 5, cnt: 3}"), 3, 18, "did you mean 'count'?"),
        (BASE + "steps: true\n", 4, 8, "steps: expected a whole number"),
        (BASE + "steps: 0\n", 4, 8, "steps: 0 is out of range"),
        (BASE + "cfg: high\n", 4, 6, "cfg: 'high' is neither a number nor a range like 5-7"),
        (BASE + "cfg: .nan\n", 4, 6, "cfg: expected a finite number"),
        (BASE + "clip_skip: 13\n", 4, 12, "clip_skip: 13 is out of range; expected 1 to 12"),
        (BASE + "sampler: [Euler a, DPM++ 2M Karas]\n", 4, 20, "unknown sampler 'DPM++ 2M Karas' (did you mean 'DPM++ 2M Karras'?)"),
        (BASE + "sampler: Euler a\nschedule: Karras\n", 5, 11, "sampler 'Euler a' has no schedule type 'Karras'"),
        (BASE + "schedule: Karass\n", 4, 11, "unknown schedule type 'Karass' (did you mean 'Karras'?)"),
        (BASE + "size: 512*512\n", 4, 7, "size: expected WIDTHxHEIGHT like 512x768"),
        (BASE + "size: 500x512\n", 4, 7, "500 is not a multiple of 8"),
        (BASE + "size: 64x64\nwidth: 64\n", 5, 1, "either size"),
        (BASE.replace("checkpoint: seedfarm-tiny", "checkpoint: 1.5"), 2, 13, "(put it in quotes)"),
        (BASE.replace("seed: 1", "seed: 1-3") + "cfg: [5, 6]\ncombine: (seed, cfg)\n", 5, 10,
         "zipped axes (seed, cfg) need the same number of values; seed has 3, cfg has 2"),
        (BASE.replace("seed: 1", "seed: 1-3") + "cfg: [5, 6]\ncombine: seed\n", 5, 10, "every swept axis must appear once; add cfg"),
        (BASE.replace("seed: 1", "seed: 1-3") + "combine: 'seed * cgf'\n", 4, 18, "'cgf' is not an axis of this job (did you mean 'cfg'?)"),
        (BASE.replace("seed: 1", "seed: 1-3") + "combine: seed * seeds\n", 4, 17, "'seeds' appears twice"),
        (BASE.replace("seed: 1", "seed: 1-3") + "combine: seed cfg\n", 4, 15, "unexpected 'cfg'"),
        (BASE.replace("seed: 1", "seed: 1-3") + "combine: seed *\n", 4, 16, "the expression is incomplete"),
        (BASE + "prompt_sr: [cat, dog]\n", 4, 13, "prompt_sr: 'cat' is not in the prompt 'a robot'"),
        (BASE + "grid: {x: cfgg}\n", 4, 11, "grid.x: 'cfgg' is not an axis of this job (did you mean 'cfg'?)"),
        (BASE.replace("seed: 1", "seed: 1-2") + "grid: {x: seed, y: seed}\n", 4, 20, "x and y are both 'seed'"),
        (BASE + "grid: {x: steps}\n", 4, 11, "grid.x: 'steps' has one value in this job; a grid axis must be swept"),
        (BASE + "output: {filename: '[seed]-[foo]'}\n", 4, 20, "unknown filename token [foo]"),
        (BASE + "output: {folder: a/b}\n", 4, 18, "output.folder: 'a/b' must be one folder name"),
        (BASE + "seeds: 4\n", 4, 1, "'seeds' is already given (as 'seed')"),
        (BASE + "version: 2\n", 4, 10, "job spec version 1"),
        (BASE + "prompt_matrix: maybe\n", 4, 16, "prompt_matrix: expected true or false"),
        (BASE + "batch_size: 0\n", 4, 13, "batch_size: must be at least 1"),
        (BASE + "name: my job\n", 4, 7, "cannot be a folder name"),
        (BASE + "cfg: !!python/object:os.system x\n", 4, 6, "cannot read this value"),
        (BASE + "cfg: \x07\n", 4, 6, "special characters are not allowed"),
    ],
)
def test_errors_point_at_the_offending_node(text, line, col, message):
    e = error_of(text)
    assert (e.file, e.line, e.col) == ("jobs/x.yaml", line, col), str(e)
    assert message in e.message
    assert str(e) == f"jobs/x.yaml:{line}:{col}: {e.message}"
    assert "\n" not in str(e)


def test_error_messages_are_one_line_even_for_multiline_values():
    e = error_of(BASE + "prompt_sr: [cat, dog]\n".replace("cat", '"cat\\nhat"'))
    assert "\n" not in str(e) and str(e).startswith("jobs/x.yaml:4:")


def test_load_spec_reports_unreadable_files(tmp_path):
    with pytest.raises(SpecError) as e:
        load_spec(tmp_path / "missing.yaml")
    assert str(e.value).startswith(f"{tmp_path / 'missing.yaml'}:1:1: cannot read the job spec")


def test_load_spec_names_the_file_in_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BASE + "cfg: [5, x]\n")
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert str(e.value).startswith(f"{path}:4:10: cfg: 'x'")


def test_values_may_repeat_inside_a_zip_group_but_combinations_may_not():
    spec = parse_spec("prompt: a\nseed: [1, 1, 2]\ncfg: [5, 7, 5]\ncheckpoint: x\ncombine: (seed, cfg)\n")
    assert spec.task_count() == 3
    with pytest.raises(SpecError, match=r":5:10: combine: the zipped values \(1, 5\)"):
        parse_spec("prompt: a\nseed: [1, 1, 2]\ncfg: [5, 5, 6]\ncheckpoint: x\ncombine: (seed, cfg)\n")
    with pytest.raises(SpecError, match=r":2:7: seed: the value 1 comes twice"):
        parse_spec("prompt: a\nseed: [1, 1, 2]\ncheckpoint: x\n")


# ---- eta and ENSD ---------------------------------------------------------------------------------


def test_eta_and_ensd_are_sweepable_axes_that_reach_the_tasks():
    from farm.expand import expand

    s = spec(BASE + "sampler: Euler a\neta: 0-1 [3]\nensd: [0, 31337]\n")
    assert list(s.values["eta"]) == [0.0, 0.5, 1.0] and list(s.values["ensd"]) == [0, 31337]
    assert s.combine_expression() == "eta * ensd"
    tasks = list(expand(s))
    assert [(t.eta, t.ensd) for t in tasks] == [(e, d) for e in (0.0, 0.5, 1.0) for d in (0, 31337)]
    plain = list(expand(spec(BASE + "sampler: Euler a\n")))[0]
    assert plain.eta is None and plain.ensd == 0
    # left out, both keep the task id of a spec written before they existed (test_task_ids_pinned)
    assert tasks[0].model_copy(update={"eta": None, "ensd": 0}).with_id().id == plain.id


@pytest.mark.parametrize(
    "extra, where, message",
    [
        ("eta: 1.5\n", "4:6", "eta: 1.5 is out of range; expected 0 to 1"),
        ("eta: lots\n", "4:6", "eta: 'lots' is neither a number nor a range like 5-7"),
        ("ensd: -1\n", "4:7", "ensd: -1 is out of range; expected 0 to 4294967295"),
        ("ensd: 0.5\n", "4:7", "ensd: expected a whole number"),
        ("sampler: DPM++ 2M SDE\neta: 0.5\n", "5:6",
         "eta: sampler 'DPM++ 2M SDE' renders only with its default eta 1 (diffusers fixes it); "
         "samplers that sweep eta: Euler a, DDIM"),
    ],
)
def test_eta_and_ensd_errors_are_located(extra, where, message):
    e = error_of(BASE + extra)
    assert str(e).startswith(f"jobs/x.yaml:{where}: {message}"), str(e)


def test_eta_with_a_sampler_without_eta_is_ignored_as_in_a1111():
    assert list(spec(BASE + "sampler: [Euler, DPM++ 2M SDE]\neta: 1\n").values["eta"]) == [1.0]
