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


def test_tasks_pin_their_loras_and_embeddings_by_sha256_and_a_resume_keeps_the_pins(tree):
    """The pins come from the models folder at submit and from the job record at resume (no
    folder), and stay out of the task id (the resume contract with stores already written)."""
    from farm.expand import expand
    from farm.hashes import sha256_file

    text = ("prompt: [a cat emb15 <lora:style15:1>, a dog]\nlora: [None, detail15]\n"
            "negative_prompt: old15\n" + BASE)
    submitted = parse_spec(text, "job.yaml", tree)
    pins = {"style15": sha256_file(tree / "models/Lora/style15.safetensors"),
            "detail15": sha256_file(tree / "models/Lora/detail15.safetensors")}
    embeddings = {"emb15": sha256_file(tree / "embeddings/emb15.safetensors"),
                  "old15": sha256_file(tree / "embeddings/old15.pt")}
    tasks = list(expand(submitted))
    assert all(t.lora_hashes == pins and t.embedding_hashes == embeddings for t in tasks)
    assert all(t.id == t.model_copy(update={"lora_hashes": {}, "embedding_hashes": {}}).content_id() for t in tasks)
    resumed = list(expand(parse_spec(text, "job.yaml", None, submitted.checkpoint_hashes())))
    assert resumed == tasks
    # without a models folder nor a record nothing is known: the worker goes by name, as before
    assert all(not t.lora_hashes and not t.embedding_hashes for t in expand(parse_spec(text, "job.yaml")))


def test_a_prompt_tag_may_name_a_lora_the_spec_gives_by_url(tree):
    """`<lora:NAME:W>` names a LoRA the lora key gives by URL and sha256: accepted with a models
    folder that lacks it, and pinned by that sha256."""
    from farm.expand import expand

    sha = "ab" * 32
    url = "hf://org/loras/pixel.safetensors"
    text = f'prompt: "a cat <lora:pixel:0.5>"\nlora: [None, {{url: "{url}", sha256: {sha}}}]\n' + BASE
    spec = parse_spec(text, "job.yaml", tree)  # whose folder has no 'pixel'

    tasks = list(expand(spec))
    assert [t.prompt for t in tasks] == ["a cat <lora:pixel:0.5>", "a cat <lora:pixel:0.5> <lora:pixel:1>"]
    assert all(t.lora_hashes == {"pixel": sha} and t.model_urls == {"lora:pixel": (sha, url)} for t in tasks)
    e = error_of('prompt: "a cat <lora:pixle:0.5>"\n' + f'lora: {{url: "{url}", sha256: {sha}}}\n' + BASE, tree)
    assert "unknown LoRA 'pixle'" in e.message
