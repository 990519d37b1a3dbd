"""`<lora:NAME...>` tags in a spec's prompts are checked against the models folder before anything
is queued or rendered: an unknown name is a spec error at the tag's position (farm/spec/models.py)."""

from __future__ import annotations

import pytest

from conftest import farm
from farm.spec import SpecError, parse_spec
from model_tree import a1111_tree

BASE = "checkpoint: tiny15\nseed: 1\nsteps: 2\nsize: 64x64\n"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return a1111_tree(tmp_path_factory)  # LoRAs style15, detail15, stylexl


def error_of(text: str, models) -> SpecError:
    with pytest.raises(SpecError) as e:
        parse_spec(text, "jobs/x.yaml", models)
    return e.value


def test_an_unknown_lora_in_the_prompt_points_at_its_tag(tree):
    e = error_of('prompt: "a red robot <lora:styel15:0.8>"\n' + BASE, tree)
    assert (e.line, e.col) == (1, 22)  # the '<' of the tag
    assert e.message.startswith("unknown LoRA 'styel15' (did you mean 'style15'?); looked in ")
    assert str(tree / "models" / "Lora") in e.message


def test_prompt_axis_values_and_matrix_parts_are_checked(tree):
    e = error_of("prompt:\n  - a cat <lora:style15:1>\n  - a dog <lora:detail51:1>\n" + BASE, tree)
    assert (e.line, e.col) == (3, 11) and "unknown LoRA 'detail51' (did you mean 'detail15'?)" in e.message
    e = error_of("prompt: a cat|<lyco:nope:0.5>|blue\nprompt_matrix: true\n" + BASE, tree)
    assert (e.line, e.col) == (1, 15) and "unknown LoRA 'nope'" in e.message
    e = error_of("prompt: a cat <lora:style15:lots>\n" + BASE, tree)
    assert (e.line, e.col) == (1, 9) and "weights must be numbers" in e.message


def test_prompt_sr_replacements_are_checked_as_the_prompts_they_make(tree):
    text = "prompt: a cat <lora:style15:1>\nprompt_sr: [style15, detail15, styel16]\n" + BASE
    e = error_of(text, tree)
    assert (e.line, e.col) == (2, 32)  # the replacement that makes the unknown name
    assert "unknown LoRA 'styel16'" in e.message and "prompt_sr makes with 'styel16'" in e.message
    e = error_of('prompt: a cat STYLE\nprompt_sr: "STYLE, <lora:nope:1>"\n' + BASE, tree)
    assert (e.line, e.col) == (2, 20) and "unknown LoRA 'nope'" in e.message
    spec = parse_spec(text.replace(", styel16", ""), "ok.yaml", tree)
    assert spec.task_count() == 2


def test_known_names_the_negative_prompt_and_no_models_folder_pass(tree):
    ok = "prompt: [a cat <lora:style15:1>, a dog <lyco:detail15:0.5:1>, <lora:stylexl>]\n" + BASE
    assert parse_spec(ok, "ok.yaml", tree).task_count() == 3
    # A1111 applies only the prompt's LoRAs: a tag in the negative is taken out, not checked
    assert parse_spec("prompt: a\nnegative_prompt: <lora:nope:1>\n" + BASE, "ok.yaml", tree)
    # without a models folder nothing can be checked: the worker reports it
    assert parse_spec('prompt: "a <lora:nope:1>"\n' + BASE, "ok.yaml")


def test_farm_run_and_submit_refuse_an_unknown_lora_before_anything_starts(tree, tmp_path):
    for name, text, line, col in [
        ("prompt", 'prompt: "a red robot <lora:styel15:0.8>"\n' + BASE, 1, 22),
        ("axis", "prompt:\n  - a cat <lora:style15:1>\n  - a dog <lora:nope>\n" + BASE, 3, 11),
    ]:
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(text)
        result = farm("run", str(spec), "--out", str(tmp_path / "out"), "--models", str(tree))
        assert result.returncode == 2, result.stderr
        (only,) = result.stderr.strip().splitlines()
        assert only.startswith(f"{spec}:{line}:{col}: unknown LoRA "), only
        assert "looked in " in only and "Traceback" not in result.stderr
        assert not (tmp_path / "out").exists()  # nothing rendered, not even a job folder
    # submit checks before it touches the broker (none listens here): exit 2, not a broker error
    result = farm("submit", str(spec), "--models", str(tree), "--broker", "redis://127.0.0.1:9/0",
                  "--store", str(tmp_path / "store"))
    assert result.returncode == 2 and f"{spec}:3:11: unknown LoRA 'nope'" in result.stderr


def test_farm_run_renders_with_a_known_lora(tree, tmp_path):
    spec = tmp_path / "ok.yaml"
    spec.write_text('prompt: "a red robot <lora:style15:0.8>"\n' + BASE)
    result = farm("run", str(spec), "--out", str(tmp_path / "out"), "--models", str(tree))
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out").glob("*/images/*.png"))) == 1
