"""worker/conditioning.py: A1111's chunking, emphasis, clip skip and prompt editing, checked on the
token level and through real renders of the tiny SD1.5 and SDXL models (64x64, 3 steps)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from farm.task import RenderTask
from worker.conditioning import (
    Encoder, chunk_ids, conditioning_schedule, encode, token_count, tokenize_chunks,
)
from worker.render import RenderError, render_images
from worker.tiny import tiny_pipeline
from factories import make_task

BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def xl():
    return tiny_pipeline("SDXL")


def _task(**overrides) -> RenderTask:
    return make_task(**{"seed": 77, "checkpoint": "tiny", "steps": 3, **overrides})


def _render(p, **overrides) -> np.ndarray:
    return np.asarray(render_images(p, _task(**overrides))[0]).astype(np.int16)


def _differ(a, b) -> bool:
    return int(np.abs(a - b).max()) > 0


# ---- tokens and chunks -----------------------------------------------------------------------

def test_chunks_of_75_and_a1111s_count(pipe):
    tok = pipe.tokenizer
    chunks, count = tokenize_chunks(tok, "cat " * 80)
    assert [len(c.tokens) for c in chunks] == [75, 5] and count == 80
    assert token_count(tok, "cat " * 80) == (80, 150)
    assert token_count(tok, "cat " * 75) == (75, 75)
    assert token_count(tok, "") == (0, 75)
    assert token_count(tok, "<lora:style:0.8> cat") == (1, 75)  # tags are not tokens
    assert token_count(tok, "[cat:cat cat cat:2]", steps=4) == (3, 75)  # the longest text counts


def test_comma_backtrack_moves_the_words_after_a_recent_comma(pipe):
    tok = pipe.tokenizer
    comma = tok.convert_tokens_to_ids(",</w>")
    chunks, count = tokenize_chunks(tok, "cat " * 70 + ", " + "cat " * 10)
    assert [len(c.tokens) for c in chunks] == [71, 10]
    assert chunks[0].tokens[-1] == comma  # the comma stays; the words after it move
    assert count == 85
    far, _ = tokenize_chunks(tok, "cat " * 50 + ", " + "cat " * 40)  # comma 25 tokens back: no move
    assert [len(c.tokens) for c in far] == [75, 16]


def test_break_starts_a_chunk_and_weights_follow_tokens(pipe):
    tok = pipe.tokenizer
    chunks, count = tokenize_chunks(tok, "a (cat:1.5) BREAK dog")
    assert [len(c.tokens) for c in chunks] == [2, 1] and count == 76
    assert chunks[0].weights == [1.0, 1.5] and chunks[1].weights == [1.0]
    assert len(tokenize_chunks(tok, "(a BREAK b)")[0]) == 1  # inside brackets BREAK is a word


def test_chunk_ids_pad_with_the_tokenizers_pad_token(pipe, xl):
    chunk = tokenize_chunks(pipe.tokenizer, "a cat")[0][0]
    ids = chunk_ids(pipe.tokenizer, chunk)
    assert len(ids) == 77 and ids[:4] == [BOS, 320, 2368, EOS] and set(ids[4:]) == {EOS}
    ids_2 = chunk_ids(xl.tokenizer_2, tokenize_chunks(xl.tokenizer_2, "a cat")[0][0])
    assert ids_2[:4] == [BOS, 320, 2368, EOS] and set(ids_2[4:]) == {0}  # OpenCLIP pads with '!'


def test_textual_inversion_vectors_stay_in_one_chunk():
    p = tiny_pipeline()  # its own copy: the embedding changes the tokenizer
    p.load_textual_inversion({"emb_params": torch.randn(3, 32)}, token="trivecemb")
    chunks, _ = tokenize_chunks(p.tokenizer, "cat " * 73 + "trivecemb", p.maybe_convert_prompt)
    assert [len(c.tokens) for c in chunks] == [73, 3]
    assert chunks[1].tokens == [49408, 49409, 49410]
    assert encode(p, "cat " * 73 + "trivecemb").embeds.shape == (1, 154, 32)


# ---- embeddings --------------------------------------------------------------------------------

def test_emphasis_scales_the_token_and_restores_the_mean(pipe):
    plain = encode(pipe, "a cat").embeds
    weighted = encode(pipe, "a (cat:1.5)").embeds
    assert torch.allclose(weighted.mean(), plain.mean(), atol=1e-6)
    rescale = weighted[0, 1] / plain[0, 1]  # "a": weight 1, only the mean restore
    assert torch.allclose(weighted[0, 2] / plain[0, 2], 1.5 * rescale, rtol=1e-4)
    assert torch.equal(encode(pipe, "a (cat:1)").embeds, plain)


def test_long_prompts_are_chunked_and_pairs_padded(pipe):
    long = "cat, " * 60
    assert encode(pipe, long).embeds.shape == (1, 154, 32)
    pos, neg = Encoder(pipe).padded(long, "")
    assert pos.embeds.shape == neg.embeds.shape == (1, 154, 32)
    # the padding chunk is the encoding of an empty prompt
    assert torch.equal(neg.embeds[:, 77:], encode(pipe, "").embeds)


def test_schedule_entries_merge_prompt_and_negative_switches(pipe):
    schedule = conditioning_schedule(pipe, "a [cat:dog:2]", "[x|y]", 4)
    assert [e.last_step for e in schedule] == [1, 2, 3, 4]
    assert torch.equal(schedule[0].positive.embeds, schedule[1].positive.embeds)
    assert not torch.equal(schedule[1].positive.embeds, schedule[2].positive.embeds)
    assert not torch.equal(schedule[0].negative.embeds, schedule[1].negative.embeds)


def test_sdxl_concatenates_both_encoders_and_pools_the_first_chunk(xl):
    first = "a cat, " * 30
    both = encode(xl, first + "dog " * 40)
    assert both.embeds.shape == (1, 154, 96) and both.pooled.shape == (1, 32)
    assert torch.equal(both.pooled, encode(xl, first).pooled)


def test_clip_skip_beyond_the_encoder_is_a_render_error(pipe):
    with pytest.raises(RenderError, match="clip skip 9 is more than the text encoder's 5 layers"):
        render_images(pipe, _task(clip_skip=9))


# ---- through real renders ----------------------------------------------------------------------

def test_weights_change_the_image(pipe):
    assert _differ(_render(pipe, prompt="a red robot"), _render(pipe, prompt="a (red:1.6) robot"))


def test_tokens_past_75_reach_the_image(pipe):
    """diffusers alone truncates at 77 tokens, so these two renders would be identical."""
    head = "a robot, " * 26  # 78 tokens
    assert _differ(_render(pipe, prompt=head + "red"), _render(pipe, prompt=head + "blue"))
    assert _differ(_render(pipe, prompt="a robot", negative_prompt=head + "green"), _render(pipe, prompt="a robot"))


def test_break_changes_the_chunking_and_the_image(pipe):
    assert _differ(_render(pipe, prompt="a red robot BREAK a blue sky"), _render(pipe, prompt="a red robot a blue sky"))


def test_prompt_editing_switches_at_a1111s_step(pipe):
    # 4 steps: the last one, near sigma 0, barely moves a pixel, so switches come early
    cat, dog = _render(pipe, prompt="a cat", steps=4), _render(pipe, prompt="a dog", steps=4)
    edited = _render(pipe, prompt="a [cat:dog:1]", steps=4)  # A1111: sampler steps 0, 1 cat; 2, 3 dog
    assert _differ(edited, cat) and _differ(edited, dog)
    assert not _differ(_render(pipe, prompt="a [cat:dog:5]", steps=4), cat)  # never reached
    assert _differ(_render(pipe, prompt="a [cat|dog]", steps=4), cat)


def test_sdxl_renders_editing_long_prompts_and_clip_skip(xl):
    base = _render(xl, prompt="a red robot")
    assert _differ(_render(xl, prompt="a red robot", steps=4), _render(xl, prompt="a [red:blue:1] robot", steps=4))
    assert _differ(base, _render(xl, prompt="a red robot", clip_skip=2))
    long = _render(xl, prompt="a robot, " * 26 + "red", batch_size=2)
    assert long.shape == (64, 64, 3)
    assert _differ(base, _render(xl, prompt="a red robot AND a blue sky :0.7"))


def test_emphasis_of_a_chunk_with_a_zero_mean_stays_finite():
    # A1111 divides by the weighted mean unguarded; an exactly-zero mean must not give NaN or inf.
    from worker.conditioning import _emphasis

    z = torch.tensor([[[1.0, -1.0], [2.0, -2.0], [0.5, -0.5]]])  # every token's mean is exactly 0
    weighted = _emphasis(z, [1.0, 1.5, 1.0])
    assert torch.isfinite(weighted).all()
    assert torch.equal(weighted, z * torch.tensor([1.0, 1.5, 1.0]).reshape(1, -1, 1))  # weights, no rescale
    nearly = _emphasis(z + 1e-12, [1.0, 1.5, 1.0])
    assert torch.isfinite(nearly).all() and nearly.abs().max() < 4


def test_tiny_encoder_outputs_have_a_nonzero_mean(pipe):
    # so the emphasis test above checks the real mean restore on every CPU
    assert encode(pipe, "a cat").embeds.mean().abs() > 1e-3
