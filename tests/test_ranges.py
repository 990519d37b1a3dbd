"""A1111 range strings (farm/ranges.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.ranges import Concat, Progression, RangeError, concat, parse_list, parse_range, parse_values


@pytest.mark.parametrize(
    "text, expected",
    [
        ("7", [7]),
        (" 7 ", [7]),
        ("-3", [-3]),
        ("1-5", [1, 2, 3, 4, 5]),
        ("1 - 5", [1, 2, 3, 4, 5]),
        ("1-10 (+2)", [1, 3, 5, 7, 9]),
        ("1-9 (2)", [1, 3, 5, 7, 9]),
        ("10-1 (-3)", [10, 7, 4, 1]),
        ("10-5 (-3)", [10, 7]),
        ("5-1", [5, 4, 3, 2, 1]),
        ("3-3", [3]),
        ("1-10 [5]", [1, 3, 5, 7, 10]),  # int of linspace(1, 10, 5) = 1, 3.25, 5.5, 7.75, 10
        ("1-100 [7]", [1, 17, 34, 50, 67, 83, 100]),
        ("10-1 [4]", [10, 7, 4, 1]),
        ("4-8 [1]", [4]),
        ("-2-2", [-2, -1, 0, 1, 2]),
    ],
)
def test_int_ranges(text, expected):
    assert list(parse_range(text, int)) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("7", [7.0]),
        ("7.5", [7.5]),
        ("5-7 (+0.5)", [5.0, 5.5, 6.0, 6.5, 7.0]),
        ("0.5-1.5 (+0.25)", [0.5, 0.75, 1.0, 1.25, 1.5]),
        ("1-2 [3]", [1.0, 1.5, 2.0]),
        ("0-1 [6]", [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        ("1-2 (+0.3)", [1.0, 1.3, 1.6, 1.9]),
        ("7-5 (-0.5)", [7.0, 6.5, 6.0, 5.5, 5.0]),
        ("5-7", [5.0, 6.0, 7.0]),
    ],
)
def test_float_ranges(text, expected):
    values = list(parse_range(text, float))
    assert values == expected
    assert all(isinstance(v, float) for v in values)


def test_float_steps_do_not_accumulate_error():
    values = list(parse_range("1-2 (+0.1)", float))
    assert values == [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0]


@pytest.mark.parametrize(
    "text, kind, message",
    [
        ("", int, "neither a number nor a range"),
        ("abc", int, "neither a number nor a range"),
        ("1-", int, "neither a number nor a range"),
        ("1-5 (+1", int, "neither a number nor a range"),
        ("10-1 (+2)", int, "is empty: step +2 never reaches 1 from 10; use a step like (-2)"),
        ("1-10 (-2)", int, "is empty"),
        ("1-10 (0)", int, "step 0"),
        ("1-10 [0]", int, "count in [ ] must be at least 1"),
        ("1.5", int, "must be a whole number"),
        ("1-2.5", int, "must be a whole number"),
        ("1-10 (+0.5)", int, "must be a whole number"),
        ("5-7 (-0.5)", float, "is empty"),
        ("1-2 [2.5]", float, "whole number"),
    ],
)
def test_bad_ranges(text, kind, message):
    with pytest.raises(RangeError) as e:
        parse_range(text, kind)
    assert message in str(e.value)


def test_int_step_ranges_stay_python_ranges():
    big = parse_range("0-999999", int)
    assert isinstance(big, range) and len(big) == 1_000_000
    assert big[-1] == 999_999


def test_linspace_is_lazy_and_indexable():
    seq = parse_range("0-1000000000 [1000000001]", int)
    assert isinstance(seq, Progression) and len(seq) == 1_000_000_001
    assert seq[0] == 0 and seq[123_456_789] == 123_456_789 and seq[-1] == 1_000_000_000
    assert seq[1:4] == [1, 2, 3]
    with pytest.raises(IndexError):
        seq[len(seq)]


def test_comma_lists():
    assert list(parse_values("5, 7, 9")) == [5, 7, 9]
    assert list(parse_values("1-3, 10-11")) == [1, 2, 3, 10, 11]
    assert list(parse_values("5, 6.5", float)) == [5.0, 6.5]
    assert list(parse_values("1,,2")) == [1, 2]  # blanks are skipped, as in A1111
    assert [list(p) for p in parse_list("1-2, 7")] == [[1, 2], [7]]
    with pytest.raises(RangeError, match="empty"):
        parse_list(" , ")


def test_concat_small_is_a_list_big_is_lazy():
    assert concat([[1], range(2, 4)]) == [1, 2, 3]
    only = range(5)
    assert concat([only]) is only
    big = concat([range(0, 10), range(100, 1_000_100)])
    assert isinstance(big, Concat) and len(big) == 1_000_010
    assert big[9] == 9 and big[10] == 100 and big[-1] == 1_000_099


@settings(database=None)  # no .hypothesis folder in the work tree
@given(st.lists(st.lists(st.integers(-50, 50), min_size=1, max_size=5), min_size=1, max_size=6))
def test_concat_indexes_like_the_chained_list(parts):
    seq = Concat(parts)
    flat = [x for p in parts for x in p]
    assert len(seq) == len(flat)
    assert [seq[i] for i in range(len(flat))] == flat
    assert [seq[-i] for i in range(1, len(flat) + 1)] == [flat[-i] for i in range(1, len(flat) + 1)]
    assert list(seq) == flat


@settings(database=None)
@given(st.integers(-1000, 1000), st.integers(-1000, 1000), st.integers(1, 50))
def test_stepped_int_ranges_include_both_ends_when_reachable(start, end, step):
    step = step if end >= start else -step
    values = list(parse_range(f"{start}-{end} ({step:+d})", int))
    assert values[0] == start
    assert all(b - a == step for a, b in zip(values, values[1:]))
    assert min(start, end) <= values[-1] <= max(start, end)
    assert abs(end - values[-1]) < abs(step)  # the next step would pass the end
