"""Hostile input is refused in one line, in bounded time: specs (`farm validate`), images (`farm
info`), infotext; property tests for the spec parser and the infotext reader with a fixed budget."""

from __future__ import annotations

import struct
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm.infotext import ImageReadError, parse_infotext, read_parameters
from farm.spec import SpecError, parse_spec
from tests.conftest import farm

BASE = "prompt: a robot\ncheckpoint: seedfarm-tiny\nsteps: 2\nsampler: Euler\n"
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("extra, message", [
    ("seed: '0-18446744073709551615'", "seed: 18,446,744,073,709,551,616 values; an axis holds at most 10,000,000"),
    ("seed: {start: 0, count: 100000000000}", "an axis holds at most 10,000,000"),
    ("seed: '1-10 [2000000]'", "seed: the value 10 comes twice"),
    ("seed: '1-200000, 5-10'", "seed: the value 5 comes twice"),
    ("seed: 1-10000\ncfg: 1-30 (+0.001)", "the job has 290,010,000 tasks; at most 10,000,000"),
    ("seed: 1\nsize: 100000x100000", "size: 100000 is out of range; expected 8 to 16384"),
    ("seed: 1\nbatch_size: 1000000000", "batch_size: 1000000000 images in one render; at most 64"),
    ("seed: 1\nname: " + "a" * 300, "name: 300 characters; at most 100"),
    ("seed: １２", "seed: '１２' is neither a number nor a range"),
    ("seed: 1\ncfg: ５.５", "cfg: '５.５' is neither a number nor a range"),
    ("seed: 1\nsize: ５１２x512", "size: expected WIDTHxHEIGHT"),
    ("seed: 1\ngrid: {x: steps}", "grid.x: 'steps' has one value in this job; a grid axis must be swept"),
    ('seed: 1\nnegative_prompt: "bad \\ud800"', "negative_prompt: character #5 is a lone surrogate"),
    ("seed: 1\ncfg: " + "[" * 1000 + "]" * 1000, "YAML nested too deeply"),
    ("seed: 1\ncfg: " + "[" * 50 + "]" * 50, "cfg: expected a number, a list, or a range"),
    ("seed: 1\nnegative_prompt: " + "a" * 30_000, "negative_prompt: 30,000 characters; the limit is 20,000"),
])
def test_hostile_specs_are_refused_in_one_located_line(extra, message):
    with pytest.raises(SpecError) as e:
        parse_spec(BASE + extra + "\n", "x.yaml")
    assert message in str(e.value) and str(e.value).startswith("x.yaml:") and "\n" not in str(e.value)


def test_a_50_mb_spec_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text(BASE + "seed: 1\nnegative_prompt: " + "a" * 50_000_000 + "\n")
    started = time.perf_counter()
    result = farm("validate", str(path))
    assert result.returncode == 2 and time.perf_counter() - started < 10
    assert result.stderr.strip().count("\n") == 0 and "the limit is 1,000,000" in result.stderr


def test_a_surrogate_prompt_through_the_cli_is_one_line_exit_2(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text('prompt: "a \\ud800 robot"\ncheckpoint: seedfarm-tiny\nseed: 1\n')
    result = farm("validate", str(path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"{path}:1:9: prompt: character #3 is a lone surrogate (\\ud800), not text"


# --- images --------------------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(w: int, h: int, extra: bytes = b"") -> bytes:
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    idat = _chunk(b"IDAT", zlib.compress(b"\0" * (1 + 3 * min(w, 16))))
    return b"\x89PNG\r\n\x1a\n" + ihdr + extra + idat + _chunk(b"IEND", b"")


HOSTILE_IMAGES = {
    "bomb": (_png(100_000, 100_000), "decompression bomb"),
    "huge": (_png(10_000, 10_000), "the image is 10000x10000 pixels"),
    "ztxt": (_png(1, 1, _chunk(b"zTXt", b"parameters\0\0" + zlib.compress(b"a" * 5_000_000))), "too large"),
    "itxt": (_png(1, 1, _chunk(b"iTXt", b"parameters\0\1\0\0\0" + zlib.compress(b"a" * 5_000_000))), "too large"),
    "long": (_png(1, 1, _chunk(b"tEXt", b"parameters\0" + b"ab cd " * 30_000)), "the limit is 100,000"),
    "truncated": (_png(8, 8)[:40], "not an image Pillow can read"),
    "junk": (b"\x89PNG junk" * 10, "not an image Pillow can read"),
}


@pytest.mark.parametrize("name", list(HOSTILE_IMAGES))
def test_hostile_images_are_refused_in_one_line(name):
    data, message = HOSTILE_IMAGES[name]
    started = time.perf_counter()
    with pytest.raises(ImageReadError) as e:
        read_parameters(data)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert time.perf_counter() - started < 2


def test_farm_info_on_a_bomb_is_one_line_exit_2(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(HOSTILE_IMAGES["bomb"][0])
    result = farm("info", str(path), "--json")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "decompression bomb" in result.stderr


@pytest.mark.parametrize("line", ["a" * 80_000, "ab cd " * 14_000, "key: " * 16_000, 'k: "\\' * 16_000])
def test_reading_a_long_infotext_is_linear(line):
    started = time.perf_counter()
    parse_infotext("a robot\n" + line)
    assert time.perf_counter() - started < 1.0


@PROPERTY
@given(st.text(max_size=3000))
def test_the_infotext_reader_reads_any_text(text):
    prompt, negative, params = parse_infotext(text)
    assert isinstance(prompt, str) and isinstance(negative, str) and isinstance(params, dict)


SPEC_PIECES = st.sampled_from([
    "prompt: a robot\n", "checkpoint: seedfarm-tiny\n", "seed: 1-4\n", "seed: '0-18446744073709551615'\n",
    "cfg: [5, 7]\n", "steps: ３\n", "size: 64x64\n", "grid: {x: seed}\n", "batch_size: 99999\n",
    "combine: seed * cfg\n", "prompt_matrix: true\n", "prompt: 'a|b|c'\n", "name: x\n", "[[[[\n", "- a\n",
    "sampler: [Euler, 'DPM++ 2M']\n", "schedule: Karras\n", "seed: {start: 1, count: 3}\n", "cfg: 1-2 [3]\n",
])


@PROPERTY
@given(st.lists(SPEC_PIECES, max_size=8), st.text(max_size=60))
def test_the_spec_parser_accepts_or_refuses_any_text_in_one_line(pieces, noise):
    for text in ("".join(pieces), "".join(pieces) + noise, noise):
        try:
            parse_spec(text, "x.yaml")
        except SpecError as e:
            assert str(e).startswith("x.yaml:") and "\n" not in str(e)


# --- a store that fails for good ------------------------------------------------------------------

def test_a_store_failing_for_good_ends_the_job_finished_with_the_reason(redis_server):
    from farm.jobs import finish_job
    from farm.ledger import Ledger
    from farm.status import is_finished
    from farm.store.memory import MemoryStore

    class DiskFull(MemoryStore):
        def write_bytes(self, key: str, data: bytes) -> None:
            raise OSError(28, "No space left on device")

    ledger = Ledger(redis_server.client())
    ledger.register_job("j", {"tasks": 2, "store": "memory://full"})
    ledger.task_finished("j", "t1", "alpha", images=1)
    assert ledger.task_finished("j", "t2", "alpha", failed="storing the image failed: OSError: No space left")
    assert finish_job(DiskFull(), ledger, "j") == []
    st = ledger.status("j")
    assert is_finished(st) and st.status == "finished, 1 failed"
    assert "No space left on device" in st.info["reason"]
