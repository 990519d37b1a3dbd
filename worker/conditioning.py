"""Prompt text -> text-encoder embeddings, built the way A1111 builds them (A1111's
modules/sd_hijack_clip.py and modules/prompt_parser.py).

- Emphasis ("Original"): each token's output vector is multiplied by its weight, then the chunk is
  rescaled so its mean is what it was before weighting.
- Long prompts: 75-token chunks (+ BOS/EOS = 77) encoded one by one and concatenated; a full chunk
  moves the words after a comma in its last 20 tokens to the next chunk; `BREAK` starts a chunk; a
  textual-inversion embedding is never split. Positive and negative are padded with empty chunks to
  the same count.
- Clip skip is done here (diffusers' `clip_skip` crashes on SD1.5 with transformers >= 5.6 and
  counts one lower than A1111).
- Prompt editing and alternation: one conditioning per schedule entry, switched between steps.
- Composable `AND`: each part (with its weight) is encoded and scheduled on its own; the render
  combines their guidance (worker/render.py).

A pipeline has one (tokenizer, text encoder) pair per encoder of its family (worker/families/):
several encoders' outputs are concatenated per token, and the pooled vector is taken from the first
chunk of the last encoder that gives one (SDXL's second).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from farm.prompts import extract_extra_networks
from worker.families import of_pipeline
from worker.families.base import PartsFamily, WorkerFamily
from worker.prompt_syntax import parse_attention, prompt_schedules, split_and

CHUNK = 75  # tokens per chunk between BOS and EOS
COMMA_BACKTRACK = 20


class ConditioningError(ValueError):
    """A prompt that cannot be encoded; the message is one line."""


@dataclass
class Chunk:
    tokens: list[int]  # at most CHUNK ids, no BOS/EOS
    weights: list[float]


@dataclass
class Conditioning:
    embeds: torch.Tensor  # (1, 77 * chunks, dim)
    pooled: torch.Tensor | None = None  # (1, dim) for a family with a pooled vector (SDXL)


# ---- tokens and chunks -------------------------------------------------------------------------

def _units(ids: list[int], base_vocab: int) -> list[list[int]]:
    """Tokens one by one, except that a run of added tokens (a textual-inversion embedding's
    vectors: `name name_1 ...`) is one unit that must stay in one chunk."""
    units: list[list[int]] = []
    for token in ids:
        if token >= base_vocab and units and units[-1][-1] >= base_vocab:
            units[-1].append(token)
        else:
            units.append([token])
    return units


def tokenize_chunks(tokenizer, text: str, convert=None) -> tuple[list[Chunk], int]:
    """(chunks, token count as A1111's UI counts it) for one prompt text (no extra-network tags).
    `convert` expands textual-inversion tokens (pipe.maybe_convert_prompt)."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks: list[Chunk] = []
    count = 0
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal tokens, weights, last_comma, count
        count += CHUNK
        chunks.append(Chunk(tokens, weights))
        tokens, weights, last_comma = [], [], -1

    for piece, weight in parse_attention(text):
        if piece == "BREAK" and weight == -1:
            close()
            continue
        if convert is not None:
            piece = convert(piece, tokenizer)
        ids = tokenizer(piece, add_special_tokens=False, truncation=False, verbose=False).input_ids
        for unit in _units(ids, tokenizer.vocab_size):
            if len(unit) > CHUNK:
                raise ConditioningError(f"an embedding of {len(unit)} vectors does not fit in a {CHUNK}-token chunk")
            if unit == [comma]:
                last_comma = len(tokens)
            elif len(tokens) == CHUNK and last_comma >= 0 and len(tokens) - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1  # the comma stays; the words after it start the next chunk
                moved = tokens[cut:], weights[cut:]
                tokens, weights = tokens[:cut], weights[:cut]
                close()
                tokens, weights = list(moved[0]), list(moved[1])
            if len(tokens) == CHUNK or len(tokens) + len(unit) > CHUNK:
                close()
            tokens += unit
            weights += [weight] * len(unit)
    if tokens or not chunks:
        count -= CHUNK - len(tokens)  # the last chunk counts only its own tokens
        close()
    return chunks, count


def token_count(tokenizer, prompt: str, steps: int = 20) -> tuple[int, int]:
    """A1111's UI counter: (tokens, next multiple of 75), e.g. (86, 150), for the longest text an
    AND part of the prompt takes during `steps` steps, extra-network tags removed."""
    text, _ = extract_extra_networks(prompt)
    texts = [t for part, _ in split_and(text) for _, t in prompt_schedules(part, steps)]
    count = max(tokenize_chunks(tokenizer, t)[1] for t in texts)
    return count, math.ceil(max(count, 1) / CHUNK) * CHUNK


def chunk_ids(tokenizer, chunk: Chunk) -> list[int]:
    """BOS, the tokens, EOS, then padding (the tokenizer's pad token: EOS for SD1's CLIP, id 0
    for SDXL's second tokenizer)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id] + chunk.tokens + [tokenizer.eos_token_id]
    return ids + [pad] * (CHUNK + 2 - len(ids))


# ---- encoding ------------------------------------------------------------------------------

def _hidden(text_encoder, ids: torch.Tensor, clip_skip: int, family: WorkerFamily):
    """The encoder output A1111 conditions on: layer -(clip_skip + the family's skipped layers),
    then the final layer norm where the family uses it. SD1: layer -clip_skip with the norm (clip
    skip 1 = last_hidden_state). SDXL: layer -(clip_skip + 1), no norm (clip skip 1 = the
    penultimate layer SDXL was trained on)."""
    if family.final_norm and clip_skip <= 1:
        out = text_encoder(ids)
        return out[0], None
    out = text_encoder(ids, output_hidden_states=True)
    layer = clip_skip + family.skipped_layers
    layers = len(out.hidden_states) - 1  # hidden_states = embeddings + one per layer
    if layer > layers:
        raise ConditioningError(f"clip skip {clip_skip} is more than the text encoder's {layers} layers")
    z = out.hidden_states[-layer]
    if family.final_norm:  # transformers >= 5.6 flattened CLIPTextModel; older versions wrap .text_model
        z = getattr(text_encoder, "text_model", text_encoder).final_layer_norm(z)
    return z, getattr(out, "text_embeds", None)


MEAN_FLOOR = 1e-6  # a weighted mean below this fraction of the mean magnitude is "zero": no restore


def _emphasis(z: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """A1111 "Original": multiply per token, then restore the chunk's mean (scale by mean before /
    mean after).

    A1111 (modules/sd_hijack_clip.py) divides by the weighted mean unguarded, so a chunk whose mean
    is zero gives NaN or inf. Here, when the weighted mean is zero or below MEAN_FLOOR times the
    chunk's mean magnitude, the chunk keeps its weighted values unrescaled; any other chunk is
    scaled exactly as A1111 scales it (a real text encoder's chunk mean is nowhere near zero)."""
    if all(w == 1.0 for w in weights):
        return z
    before = z.mean()
    z = z * torch.tensor(weights, dtype=z.dtype, device=z.device).reshape(1, -1, 1)
    after = z.mean()
    usable = after.abs() > MEAN_FLOOR * z.abs().mean()
    scale = torch.where(usable, before / torch.where(usable, after, torch.ones_like(after)), torch.ones_like(after))
    return z * scale


class Encoder:
    """Encodes prompt texts for one pipeline, caching each distinct text (alternation re-uses a
    handful of texts over many steps)."""

    def __init__(self, pipe, clip_skip: int = 1):
        self.pipe = pipe
        self.family = of_pipeline(pipe)
        self.pairs = self.family.text_encoders(pipe)
        self.clip_skip = clip_skip
        self.convert = getattr(pipe, "maybe_convert_prompt", None)  # multi-vector embeddings
        self._cache: dict[str, tuple[list[torch.Tensor], torch.Tensor | None]] = {}
        self._empty: torch.Tensor | None = None

    @torch.inference_mode()
    def chunks(self, text: str) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Per-chunk embeddings (each (1, 77, dim)) and the pooled vector of the first chunk."""
        if text not in self._cache and isinstance(self.family, PartsFamily):
            # a family built from parts encodes a text its own way (T5/LLM encoders: no 75-token chunks)
            encoded = self.family.encode(self.pipe, text, self.clip_skip)
            self._cache[text] = ([encoded.embeds], encoded.pooled)
        if text not in self._cache:
            per_encoder = []
            pooled = None
            for tokenizer, text_encoder in self.pairs:
                chunks, _ = tokenize_chunks(tokenizer, text, self.convert)
                outs = []
                for n, chunk in enumerate(chunks):
                    ids = torch.tensor([chunk_ids(tokenizer, chunk)], device=text_encoder.device)
                    z, pool = _hidden(text_encoder, ids, self.clip_skip, self.family)
                    outs.append(_emphasis(z, [1.0] + chunk.weights + [1.0] * (CHUNK + 1 - len(chunk.weights))))
                    if n == 0 and pool is not None:
                        pooled = pool
                per_encoder.append(outs)
            if len({len(outs) for outs in per_encoder}) > 1:  # two tokenizers that chunk differently
                raise ConditioningError("the text encoders split this prompt into different chunk counts")
            chunks = [torch.cat(parts, dim=-1) for parts in zip(*per_encoder)]
            self._cache[text] = (chunks, pooled)
        return self._cache[text]

    def padded(self, *texts: str) -> list[Conditioning]:
        """The texts' conditionings, padded with empty chunks to the same length (the negative and
        the prompt's AND parts are used side by side in one batch)."""
        encoded = [self.chunks(text) for text in texts]
        empty = self.chunks("")[0][0]
        n = max(len(chunks) for chunks, _ in encoded)
        return [Conditioning(torch.cat(chunks + [empty] * (n - len(chunks)), dim=1), pooled)
                for chunks, pooled in encoded]


def encode(pipe, text: str, clip_skip: int = 1) -> Conditioning:
    """One prompt text (no schedule, no extra-network tags) as the pipeline's conditioning."""
    chunks, pooled = Encoder(pipe, clip_skip).chunks(text)
    return Conditioning(torch.cat(chunks, dim=1), pooled)


@dataclass
class ScheduledPair:
    last_step: int  # used for sampler steps (0-based, as A1111 counts them) up to this one
    positive: Conditioning  # the first AND part: what the pipeline itself is given
    negative: Conditioning
    parts: list[tuple[float, Conditioning]]  # every AND part with its weight

    @property
    def composable(self) -> bool:
        """Whether guidance must combine parts (`a AND b`, or one part with a weight `a:1.5`)."""
        return len(self.parts) > 1 or self.parts[0][0] != 1.0


def conditioning_schedule(pipe, prompt: str, negative: str, steps: int, clip_skip: int = 1) -> list[ScheduledPair]:
    """The conditioning for every part of sampling: one entry per step where the negative prompt
    or any AND part of the prompt changes (prompt editing, alternation); one entry when none does.
    Extra-network tags are removed first (their weights are applied to the model, not the text)."""
    encoder = Encoder(pipe, clip_skip)
    pos_text, _ = extract_extra_networks(prompt)
    neg_text, _ = extract_extra_networks(negative)
    parts = [(weight, prompt_schedules(text, steps)) for text, weight in split_and(pos_text)]
    neg_schedule = prompt_schedules(neg_text, steps)
    switches = {s for s, _ in neg_schedule} | {s for _, schedule in parts for s, _ in schedule}
    pairs = []
    for step in sorted(switches):
        neg, *pos = encoder.padded(text_at(neg_schedule, step), *(text_at(s, step) for _, s in parts))
        pairs.append(ScheduledPair(step, pos[0], neg, [(w, c) for (w, _), c in zip(parts, pos)]))
    return pairs


def text_at(schedule: list[tuple[int, str]], step: int) -> str:
    """The text used at a step: A1111 takes the first entry whose last step is >= the step."""
    return next((text for last, text in schedule if step <= last), schedule[-1][1])


def entry_at(schedule: list[ScheduledPair], step: int) -> ScheduledPair:
    return next((e for e in schedule if step <= e.last_step), schedule[-1])


def count_text(prompt: str, steps: int = 20) -> str:
    """`farm prompt count`: '86/150', with the shipped SD1.5 CLIP tokenizer (SDXL's counts the same)."""
    from transformers import CLIPTokenizer

    from farm.families import family
    from worker.pipelines import configs_dir

    folder = configs_dir() / family("SD1.5").config_folder
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    count, limit = token_count(tokenizer, prompt, steps)
    return f"{count}/{limit}"
