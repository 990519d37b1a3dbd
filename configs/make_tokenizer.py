"""How configs/sd15/tokenizer/ was made: the real CLIP BPE tokenizer (49408 tokens) without the hub.

Not needed at run time: the derived files are committed. Run it again only to re-derive them.

The source is OpenAI's `bpe_simple_vocab_16e6.txt.gz` (1,356,917 bytes, md5 933b7abb...), which the
open_clip_torch wheel ships. Get it without installing open_clip (it imports torchvision):

    pip download --no-deps open_clip_torch -d /tmp/oc
    unzip -j /tmp/oc/open_clip_torch-*.whl open_clip/bpe_simple_vocab_16e6.txt.gz -d /tmp/oc
    python configs/make_tokenizer.py /tmp/oc/bpe_simple_vocab_16e6.txt.gz configs/sd15/tokenizer

The vocab is built exactly as CLIP's SimpleTokenizer builds it: 256 byte symbols, the same with
"</w>", one token per merge, then the two special tokens (ids 49406, 49407).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

SPECIAL = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",  # SD1.5 pads with EOS (id 49407)
}


def bytes_to_unicode() -> dict[int, str]:
    """The standard GPT-2/CLIP reversible byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def make_tokenizer(bpe_gz: Path, out_dir: Path) -> None:
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # 48894 merges; line 0 is a version header
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    # tokenizer_config.json is required: without it transformers 5 pads prompts to 1e30 tokens.
    config = {
        "model_max_length": 77,
        **SPECIAL,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "tokenizer_class": "CLIPTokenizer",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(SPECIAL, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python configs/make_tokenizer.py BPE_SIMPLE_VOCAB_16E6.TXT.GZ OUT_DIR")
    make_tokenizer(Path(sys.argv[1]), Path(sys.argv[2]))
