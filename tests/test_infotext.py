"""A1111 infotext: exact strings as A1111 v1.10 writes them (its modules/processing.py,
create_infotext), the reader, PNG chunks."""

from __future__ import annotations

import io
import re
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import farm
from farm.infotext import (
    INT_KEYS,
    NUMBER_KEYS,
    READER_DEFAULTS,
    format_infotext,
    parse_infotext,
    png_bytes,
    read_parameters,
    task_parameters,
)
from farm.task import RenderTask
import factories

VERSION = f"seedfarm {farm.__version__}"


def make_task(**changes) -> RenderTask:
    fields = dict(
        job="job1", prompt="a cat", negative_prompt="", seed=1000, checkpoint="v1-5-pruned-emaonly",
        checkpoint_hash="6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
        sampler="Euler a", steps=20, width=512, height=768,
    )
    return factories.make_task(**(fields | changes))


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk, read straight from the bytes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


# ---- task_parameters ------------------------------------------------------------------------


def test_task_parameters_in_a1111_order_with_optional_keys_left_out():
    params = task_parameters(make_task(), 1003)
    assert list(params.items()) == [
        ("Steps", 20), ("Sampler", "Euler a"), ("CFG scale", 7), ("Seed", 1003),
        ("Size", "512x768"), ("Model hash", "6ce0161689"), ("Model", "v1-5-pruned-emaonly"),
        ("RNG", "CPU"), ("Version", VERSION),
    ]
    assert isinstance(params["CFG scale"], int)


def test_task_parameters_schedule_clip_skip_fractional_cfg_and_unknown_hash():
    params = task_parameters(
        make_task(sampler="DPM++ 2M", schedule="Karras", cfg=7.5, clip_skip=2, checkpoint_hash=None), 5
    )
    assert params["Schedule type"] == "Karras"
    assert params["CFG scale"] == 7.5
    assert params["Clip skip"] == 2
    assert params["Model hash"] is None
    text = format_infotext("p", "", params)
    assert text == (
        "p\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 5, "
        f"Size: 512x768, Model: v1-5-pruned-emaonly, Clip skip: 2, RNG: CPU, Version: {VERSION}"
    )


# ---- format_infotext ------------------------------------------------------------------------


def test_format_full_infotext_exactly():
    task = make_task(prompt="a cat, <lora:fluffy:0.8>", negative_prompt="blurry, lowres")
    text = format_infotext(task.prompt, task.negative_prompt, task_parameters(task, 1000))
    assert text == (
        "a cat, <lora:fluffy:0.8>\n"
        "Negative prompt: blurry, lowres\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1000, Size: 512x768, Model hash: 6ce0161689, "
        f"Model: v1-5-pruned-emaonly, RNG: CPU, Version: {VERSION}"
    )


def test_negative_line_only_when_non_empty_and_multiline_prompt_kept():
    text = format_infotext("line one\nline two", "", {"Steps": 4, "Sampler": "Euler", "Seed": 1})
    assert text == "line one\nline two\nSteps: 4, Sampler: Euler, Seed: 1"
    text = format_infotext("p", "bad\nworse", {"Steps": 4, "Sampler": "Euler", "Seed": 1})
    assert text == "p\nNegative prompt: bad\nworse\nSteps: 4, Sampler: Euler, Seed: 1"


def test_values_with_comma_colon_or_newline_are_json_quoted_without_ascii_escapes():
    params = {
        "Steps": 20,
        "Lora hashes": "fluffy: 0123456789ab, neon: ba9876543210",
        "Note": "two\nlines",
        "Titel": "Käse: gut",
        "Quote": 'say "hi"',  # no comma, colon or newline: written as is
    }
    text = format_infotext("p", "", params)
    assert text.splitlines()[-1] == (
        'Steps: 20, Lora hashes: "fluffy: 0123456789ab, neon: ba9876543210", Note: "two\\nlines", '
        'Titel: "Käse: gut", Quote: say "hi"'
    )


def test_key_order_known_keys_then_extras_in_insertion_order_then_version_and_user():
    params = {
        "User": "me", "Version": "v1", "Emphasis": "No norm", "Seed": 1, "Lora hashes": "a: 1",
        "RNG": "CPU", "Steps": 3, "Clip skip": 2, "Size": "64x64",
    }
    line = format_infotext("", "", params)
    assert line == (
        'Steps: 3, Seed: 1, Size: 64x64, Clip skip: 2, RNG: CPU, Emphasis: No norm, '
        'Lora hashes: "a: 1", Version: v1, User: me'
    )


def test_none_left_out_bare_key_when_value_equals_key_and_text_stripped():
    params = {"Steps": 3, "Model hash": None, "Tiling": "Tiling", "Seed": 2, "Sampler": "Euler"}
    # only the whole text is stripped: the prompt's own trailing newline stays as an empty line
    assert format_infotext("  a cat \n", "", params) == "a cat \n\nSteps: 3, Sampler: Euler, Seed: 2, Tiling"
    assert format_infotext("", "", {}) == ""


# ---- parse_infotext -------------------------------------------------------------------------

A1111_TEXT = (
    "masterpiece, a (red:1.2) fox\n"
    "in the snow <lora:fluffy:0.7>\n"
    "Negative prompt: lowres, bad anatomy\n"
    "watermark\n"
    "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3141592653, "
    "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, "
    'Lora hashes: "fluffy: 0123456789ab", Version: v1.10.1'
)


def test_parse_a1111_text():
    prompt, negative, params = parse_infotext(A1111_TEXT)
    assert prompt == "masterpiece, a (red:1.2) fox\nin the snow <lora:fluffy:0.7>"
    assert negative == "lowres, bad anatomy\nwatermark"
    assert params == {
        "Steps": 30, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 6.5,
        "Seed": 3141592653, "Size": "512x768", "Size-1": 512, "Size-2": 768,
        "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly", "Clip skip": 2,
        "Lora hashes": "fluffy: 0123456789ab", "Version": "v1.10.1", "RNG": "GPU",
    }
    assert list(params)[:4] == ["Steps", "Sampler", "Schedule type", "CFG scale"]


def test_parse_fills_a1111_defaults_and_keeps_digit_only_hashes_as_text():
    _, _, params = parse_infotext("p\nSteps: 4, Seed: 1, Model hash: 1234567890, Model: 42")
    assert params["Clip skip"] == 1 and params["RNG"] == "GPU" and params["Schedule type"] == "Automatic"
    assert params["Model hash"] == "1234567890" and params["Model"] == "42"
    assert params["Steps"] == 4 and params["Seed"] == 1


def test_last_line_with_fewer_than_three_pairs_is_prompt_text():
    prompt, negative, params = parse_infotext("a cat\nstyle: oil, light: soft")
    assert prompt == "a cat\nstyle: oil, light: soft"
    assert negative == ""
    assert params == READER_DEFAULTS


def test_parse_negative_without_parameters_and_bare_keys():
    prompt, negative, _ = parse_infotext("a cat\nNegative prompt: dogs")
    assert (prompt, negative) == ("a cat", "dogs")
    _, _, params = parse_infotext("x\nSteps: 1, Tiling, Seed: 2, Sampler: Euler")
    assert params["Tiling"] == "Tiling" and params["Seed"] == 2 and params["Sampler"] == "Euler"


def test_parse_quoted_value_with_escapes_and_unicode():
    _, _, params = parse_infotext('p\nSteps: 1, Seed: 2, Note: "two\\nlines, \\"q\\"", Titel: "Käse: gut"')
    assert params["Note"] == 'two\nlines, "q"'
    assert params["Titel"] == "Käse: gut"


def test_task_infotext_round_trip():
    task = make_task(prompt="a cat,\n(b:1.1)", negative_prompt="dog", schedule="Karras", sampler="DPM++ 2M",
                     cfg=4.5, clip_skip=3)
    params = task_parameters(task, 1001)
    prompt, negative, parsed = parse_infotext(format_infotext(task.prompt, task.negative_prompt, params))
    assert (prompt, negative) == (task.prompt, task.negative_prompt)
    assert parsed == params | {"Size-1": 512, "Size-2": 768}


# Text the way it survives an infotext: A1111's reader strips each line and the whole text, and a
# line starting "Negative prompt:" always starts the negative part.
def _normalise(text: str) -> str:
    return "\n".join(line.strip() for line in text.split("\n")).strip()


texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40).map(_normalise).filter(
    lambda t: not any(line.startswith("Negative prompt:") for line in t.split("\n"))
)
keys = st.from_regex(r"[A-Za-z][A-Za-z0-9 \-/]{0,12}", fullmatch=True).map(str.strip).filter(
    lambda k: k not in INT_KEYS | NUMBER_KEYS | set(READER_DEFAULTS) and not k.endswith(("-1", "-2"))
)
# Left out: values A1111's reader cannot give back as written (an unquoted value that starts with
# a quote, or with spaces around it, or `WxH` which also gives Key-1/Key-2: tested above).
values = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20).filter(
    lambda v: v == v.strip() and not v.startswith('"') and not re.fullmatch(r"\d+x\d+", v)
)


@settings(max_examples=300, deadline=None)
@given(prompt=texts, negative=texts, pairs=st.dictionaries(keys, values, min_size=3, max_size=8),
       bare=st.lists(keys, max_size=2))
def test_round_trip_property(prompt, negative, pairs, bare):
    params = dict(pairs) | {k: k for k in bare}
    if sum(1 for k, v in params.items() if k != v) < 3:
        params |= {"Aa": "1", "Bb": "2", "Cc": "3"}  # the reader needs 3 key: value pairs
    text = format_infotext(prompt, negative, params)
    got_prompt, got_negative, got = parse_infotext(text)
    assert (got_prompt, got_negative) == (prompt, negative)
    assert got == params | READER_DEFAULTS
    assert format_infotext(got_prompt, got_negative, {k: got[k] for k in params}) == text


# ---- PNG --------------------------------------------------------------------------------------


def test_png_latin1_text_goes_in_a_text_chunk_and_reads_back(tmp_path):
    text = format_infotext("a café", "", task_parameters(make_task(), 1))
    data = png_bytes(Image.new("RGB", (8, 8), "red"), text)
    chunks = dict(png_chunks(data))
    assert chunks[b"tEXt"] == b"parameters\x00" + text.encode("latin-1")
    assert b"iTXt" not in chunks
    assert read_parameters(data) == text
    path = tmp_path / "x.png"
    path.write_bytes(data)
    assert read_parameters(path) == text and read_parameters(str(path)) == text
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (8, 8) and im.getpixel((4, 4)) == (255, 0, 0)


def test_png_unicode_text_goes_in_an_itxt_chunk_and_round_trips():
    text = format_infotext("一只猫, 🐱", "ぼやけた", task_parameters(make_task(), 7))
    data = png_bytes(Image.new("RGB", (8, 8)), text)
    types = [t for t, _ in png_chunks(data)]
    assert b"iTXt" in types and b"tEXt" not in types
    assert read_parameters(data) == text
    prompt, negative, params = parse_infotext(read_parameters(data))
    assert (prompt, negative, params["Seed"]) == ("一只猫, 🐱", "ぼやけた", 7)


def test_png_without_parameters_reads_none():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    assert read_parameters(buffer.getvalue()) is None


# ---- eta and ENSD ---------------------------------------------------------------------------------


def test_eta_is_written_only_when_it_differs_from_the_samplers_a1111_default():
    assert "Eta" not in task_parameters(make_task(), 1) and "Eta" not in task_parameters(make_task(eta=1.0), 1)
    text = format_infotext("a cat", "", task_parameters(make_task(eta=0.5, clip_skip=2), 1000))
    assert text.endswith(f"Clip skip: 2, RNG: CPU, Eta: 0.5, Version: {VERSION}")  # an extra key: after RNG
    assert task_parameters(make_task(eta=0.0), 1)["Eta"] == 0.0  # written as A1111 does: "Eta: 0.0"
    # DDIM's default is 0 and its key "Eta DDIM" (A1111's eta_ddim setting)
    assert "Eta DDIM" not in task_parameters(make_task(sampler="DDIM", eta=0.0), 1)
    assert task_parameters(make_task(sampler="DDIM", eta=0.3), 1)["Eta DDIM"] == 0.3
    assert not {"Eta", "Eta DDIM"} & set(task_parameters(make_task(sampler="Euler", eta=0.5), 1))  # no eta there


def test_ensd_is_written_for_the_samplers_a1111_writes_it_for_after_clip_skip():
    text = format_infotext("a cat", "", task_parameters(make_task(ensd=31337, clip_skip=2), 1000))
    assert "Clip skip: 2, ENSD: 31337, RNG: CPU" in text
    assert "ENSD" not in task_parameters(make_task(), 1)
    assert "ENSD" not in task_parameters(make_task(ensd=31337, sampler="Euler"), 1)  # A1111: uses_ensd only
    assert "ENSD" not in task_parameters(make_task(ensd=31337, eta=0.0), 1)  # eta 0 adds no noise


def test_eta_and_ensd_read_back_as_numbers():
    _, _, params = parse_infotext("a cat\nSteps: 20, Sampler: Euler a, Seed: 1, ENSD: 31337, Eta: 0.5, Eta DDIM: 0")
    assert params["ENSD"] == 31337 and params["Eta"] == 0.5 and params["Eta DDIM"] == 0
