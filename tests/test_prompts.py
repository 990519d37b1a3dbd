"""A1111 prompt syntax (worker/prompt_syntax.py): emphasis, prompt editing, alternation, AND.

Expected values are what A1111's modules/prompt_parser.py gives, plus cases worked out from its
rules."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.prompt_syntax import parse_attention, prompt_schedules, split_and


def approx(pieces):
    return [(t, pytest.approx(w)) for t, w in pieces]


@pytest.mark.parametrize("text,expected", [
    ("a (b:1.5) c", [("a ", 1.0), ("b", 1.5), (" c", 1.0)]),
    ("((x))", [("x", 1.21)]),
    ("[x]", [("x", 1 / 1.1)]),
    ("[[x]]", [("x", 1 / 1.21)]),
    ("\\(x\\)", [("(x)", 1.0)]),
    ("\\[x\\] \\\\", [("[x] \\", 1.0)]),
    ("(unclosed", [("unclosed", 1.1)]),
    ("[unclosed", [("unclosed", 1 / 1.1)]),
    ("x) y]", [("x) y]", 1.0)]),
    ("(a:b)", [("a:b", 1.1)]),
    ("a: b", [("a: b", 1.0)]),
    ("(a:1.5) (b:1.5)", [("a", 1.5), (" ", 1.0), ("b", 1.5)]),
    ("(a)(b)", [("ab", 1.1)]),  # equal neighbours merge
    ("((a:1.2) b)", [("a", 1.2 * 1.1), (" b", 1.1)]),
    ("(a:0)", [("a", 0.0)]),
    ("(a: -0.5 )", [("a", -0.5)]),
    ("[(a:2)]", [("a", 2 / 1.1)]),
    ("", [("", 1.0)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("aBREAK b", [("aBREAK b", 1.0)]),  # only the whole word
    ("a break b", [("a break b", 1.0)]),  # case-sensitive
    ("BREAK", [("", 1.0), ("BREAK", -1.0), ("", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),  # inside brackets: not a break
    ("<lora:x:0.5> cat", [("<lora", 1.0), (":", 1.0), ("x", 1.0), (":", 1.0), ("0.5> cat", 1.0)]),
])
def test_parse_attention_a1111_cases(text, expected):
    got = parse_attention(text)
    # merged pieces: compare the joined text per weight run, as A1111's list reads
    joined = []
    for t, w in expected:
        if joined and joined[-1][1] == w:
            joined[-1] = (joined[-1][0] + t, w)
        else:
            joined.append((t, w))
    assert got == approx(joined)


def test_parse_attention_nesting_multiplies_in_a1111_order():
    # A1111 multiplies when each bracket closes, innermost first: the same float, bit for bit.
    assert parse_attention("((x))") == [("x", 1.0 * 1.1 * 1.1)]
    assert parse_attention("(((x:1.3)))")[0][1] == 1.0 * 1.3 * 1.1 * 1.1


def test_parse_attention_weights_never_overflow():
    assert parse_attention("(x:1e999)") == [("x:1e999", 1.1)]  # not a finite number: text
    deep = parse_attention("(" * 10_000 + "x")
    assert deep[0][0] == "x" and math.isfinite(deep[0][1])


FANTASY = ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
           "[ in foreground::0.6][: in background:0.25] [shoddy:masterful:0.5]")


def test_prompt_schedules_reference_example():
    assert prompt_schedules(FANTASY, 100) == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


@pytest.mark.parametrize("prompt,steps,expected", [
    ("a [cat:dog:5] x", 10, [(5, "a cat x"), (10, "a dog x")]),
    ("a [cat:dog:0.5]", 10, [(5, "a cat"), (10, "a dog")]),
    ("a [cat:dog:0.29]", 100, [(28, "a cat"), (100, "a dog")]),  # int(0.29 * 100) = 28
    ("a [dog:3]", 10, [(3, "a "), (10, "a dog")]),
    ("a [dog::3]", 10, [(3, "a dog"), (10, "a ")]),
    ("[a:b:20]", 10, [(10, "a")]),  # past the last step: never switches
    ("[a:b:0]", 10, [(10, "b")]),
    ("[a:b:-1]", 10, [(10, "b")]),
    ("[a: b :  2 ]", 4, [(2, "a"), (4, " b ")]),
    ("[cat|dog]", 4, [(1, "cat"), (2, "dog"), (3, "cat"), (4, "dog")]),
    ("[cat|dog|]", 3, [(1, "cat"), (2, "dog"), (3, "")]),
    ("[a:[b:c:6]:3]", 10, [(3, "a"), (6, "b"), (10, "c")]),
    ("[(red:1.2):blue:2] car", 4, [(2, "(red:1.2) car"), (4, "blue car")]),
    ("(a [b:c:2])", 4, [(2, "(a b)"), (4, "(a c)")]),
    ("[a:b]", 4, [(4, "[a:b]")]),  # no number: plain text
    ("[a:b:c:5]", 10, [(10, "[a:b:c:5]")]),
    ("x ] ( [y", 4, [(4, "x ] ( [y")]),
    ("a | b", 4, [(4, "a | b")]),  # the grammar rejects a bare |: the prompt is used as it is
    ("a [b|c", 4, [(4, "a [b|c")]),
    ("trailing \\", 4, [(4, "trailing \\")]),
    ("\\[a:b:2\\]", 4, [(4, "\\[a:b:2\\]")]),  # escaped: kept for the emphasis parser
    ("", 5, [(5, "")]),
])
def test_prompt_schedules_cases(prompt, steps, expected):
    assert prompt_schedules(prompt, steps) == expected


@pytest.mark.parametrize("prompt,expected", [
    ("a cat", [("a cat", 1.0)]),
    ("a cat :1.2 AND a dog", [("a cat", 1.2), (" a dog", 1.0)]),
    ("a AND b:0.5 AND c: -1", [("a", 1.0), (" b", 0.5), (" c", -1.0)]),
    ("ANDROID", [("ANDROID", 1.0)]),
    ("a and b", [("a and b", 1.0)]),
])
def test_split_and(prompt, expected):
    assert split_and(prompt) == expected


PROMPT_CHARS = st.text(alphabet=st.sampled_from(list("ab ,:|()[]\\.0123456789-+eBREAKAND<>\n")), max_size=60)


@settings(max_examples=400, deadline=None)
@given(st.one_of(PROMPT_CHARS, st.text(max_size=60)))
def test_parsers_never_raise_and_weights_are_finite(text):
    pieces = parse_attention(text)
    assert pieces and all(math.isfinite(w) for _, w in pieces)
    assert all(isinstance(t, str) for t, _ in pieces)
    schedule = prompt_schedules(text, 7)
    assert schedule[-1][0] == 7 and [s for s, _ in schedule] == sorted({s for s, _ in schedule})
    assert all(1 <= s <= 7 for s, _ in schedule)
    parts = split_and(text)
    assert parts and all(math.isfinite(w) for _, w in parts)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="\\()[]:|"), max_size=40))
def test_plain_text_is_one_piece_unchanged(text):
    if "BREAK" in text:
        return
    assert parse_attention(text) == [(text, 1.0)]
    assert prompt_schedules(text, 3) == [(3, text)]
