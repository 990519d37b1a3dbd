"""The shipped tokenizers and config folders for Flux.1, SD3.5, Z-Image and Flux.2 [klein] (configs/).

Everything runs offline and without weights: tokenizers load from configs/tokenizers/, models are
built on the meta device from configs/<variant>/ and counted, and each transformer's state dict is
written back in the layout users' single files have, then classified and converted again by
diffusers' own single-file code.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
T5 = CONFIGS / "tokenizers" / "t5"
QWEN3 = CONFIGS / "tokenizers" / "qwen3"
VARIANTS = ["flux1-dev", "flux1-schnell", "sd35-medium", "sd35-large", "zimage-turbo", "flux2-klein-4b", "flux2-klein-9b"]


# --- tokenizers ----------------------------------------------------------------------------------

def test_t5_tokenizer_gives_the_upstream_ids():
    from transformers import AutoTokenizer, T5TokenizerFast

    for cls in (AutoTokenizer, T5TokenizerFast):  # T5TokenizerFast: what FluxPipeline and SD3 name
        tok = cls.from_pretrained(T5, local_files_only=True)
        assert tok("translate English to German: The house is wonderful.").input_ids == [
            13959, 1566, 12, 2968, 10, 37, 629, 19, 1627, 5, 1]
        assert len(tok) == 32100 and tok.model_max_length == 512
        assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
        assert tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == [32099, 32000]
    # Flux pads every prompt to max_sequence_length with <pad> (0); the EOS closes the prompt.
    padded = tok("a cat", padding="max_length", max_length=8, truncation=True).input_ids
    assert padded[-1] == 0 and 1 in padded and len(padded) == 8


def test_qwen3_tokenizer_gives_the_upstream_ids():
    from transformers import AutoTokenizer, Qwen2TokenizerFast

    for cls in (AutoTokenizer, Qwen2TokenizerFast):  # Qwen2TokenizerFast: what Flux2KleinPipeline names
        tok = cls.from_pretrained(QWEN3, local_files_only=True)
        assert tok("Hello world").input_ids == [9707, 1879]
        assert tok("Hello, world!").input_ids == [9707, 11, 1879, 0]
        assert tok("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n").input_ids == [
            151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198]
        assert len(tok) == 151669
        assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]) == [
            151643, 151644, 151645, 151667, 151668]
        assert tok.pad_token_id == 151643 and tok.bos_token is None
    assert tok("12345").input_ids == [16, 17, 18, 19, 20]  # Qwen2's split: one digit per token


def test_qwen3_chat_template_renders_what_the_pipelines_ask_for():
    """ZImagePipeline asks with enable_thinking=True, Flux2KleinPipeline with enable_thinking=False."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(QWEN3, local_files_only=True)
    messages = [{"role": "user", "content": "a cat"}]
    render = lambda thinking: tok.apply_chat_template(  # noqa: E731
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking)
    assert render(True) == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"
    assert render(False) == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    ids = tok(render(False), padding="max_length", max_length=20, truncation=True)
    assert ids.input_ids == [151644, 872, 198, 64, 8251, 151645, 198, 151644, 77091, 198,
                             151667, 271, 151668, 271] + [151643] * 6
    assert ids.attention_mask == [1] * 14 + [0] * 6


# --- config folders: sizes -----------------------------------------------------------------------

# Weights in the checkpoint file, in millions: parameters plus persistent buffers (SD3's pos_embed is
# a buffer in diffusers but a tensor in the file and in the published sizes), tied weights once.
# "published": the public figure the count is checked against; "pinned": no finer public figure than
# the model's name is known, so the count these configs give is pinned (see configs/README.md).
CLIP_L, CLIP_L_PROJ, CLIP_G, T5_XXL, AE16 = 123, 123.7, 695, 4760, 83.8
EXPECTED = {
    "flux1-dev": {"transformer": 11900, "vae": AE16, "text_encoder": CLIP_L, "text_encoder_2": T5_XXL},
    "flux1-schnell": {"transformer": 11900, "vae": AE16, "text_encoder": CLIP_L, "text_encoder_2": T5_XXL},
    "sd35-medium": {"transformer": 2500, "vae": AE16, "text_encoder": CLIP_L_PROJ, "text_encoder_2": CLIP_G,
                    "text_encoder_3": T5_XXL},
    "sd35-large": {"transformer": 8100, "vae": AE16, "text_encoder": CLIP_L_PROJ, "text_encoder_2": CLIP_G,
                   "text_encoder_3": T5_XXL},
    "zimage-turbo": {"transformer": 6155, "vae": AE16, "text_encoder": 4020},
    "flux2-klein-4b": {"transformer": 3876, "vae": 84.0, "text_encoder": 4020},  # transformer, vae: pinned
    "flux2-klein-9b": {"transformer": 9000, "vae": 84.0, "text_encoder": 8190},  # vae: pinned
}


def _build(folder: Path, part: str, library: str, class_name: str):
    """The part's model on the meta device, from its shipped config only."""
    import diffusers
    import transformers

    with torch.device("meta"):
        if library == "diffusers":
            cls = getattr(diffusers, class_name)
            return cls.from_config(cls.load_config(folder, subfolder=part, local_files_only=True))
        config = transformers.AutoConfig.from_pretrained(folder / part, local_files_only=True)
        return getattr(transformers, class_name)(config)


@functools.cache  # meta models hold no data; the tests only read them
def _models(variant: str) -> dict:
    folder = CONFIGS / variant
    index = json.loads((folder / "model_index.json").read_text())
    return {part: _build(folder, part, *spec) for part, spec in index.items()
            if isinstance(spec, list) and spec[0] is not None and part != "scheduler"
            and not part.startswith("tokenizer")}


def _millions(model) -> float:
    in_file = set(model.state_dict())
    buffers = sum(b.numel() for name, b in model.named_buffers() if name in in_file)
    return (sum(p.numel() for p in model.parameters()) + buffers) / 1e6


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_folder_builds_models_of_the_published_sizes(variant):
    models = _models(variant)
    assert set(models) == set(EXPECTED[variant])
    for part, model in models.items():
        assert model.device.type == "meta"
        assert _millions(model) == pytest.approx(EXPECTED[variant][part], rel=0.02), (variant, part, _millions(model))


def test_config_values_the_pipelines_depend_on():
    from diffusers import FlowMatchEulerDiscreteScheduler

    def cfg(variant, part, name="config.json"):
        return json.loads((CONFIGS / variant / part / name).read_text())

    for variant in ("flux1-dev", "flux1-schnell", "zimage-turbo"):
        assert (cfg(variant, "vae")["scaling_factor"], cfg(variant, "vae")["shift_factor"]) == (0.3611, 0.1159)
    for variant in ("sd35-medium", "sd35-large"):
        assert (cfg(variant, "vae")["scaling_factor"], cfg(variant, "vae")["shift_factor"]) == (1.5305, 0.0609)
    assert cfg("flux1-dev", "transformer")["guidance_embeds"] is True
    assert cfg("flux1-schnell", "transformer")["guidance_embeds"] is False

    def scheduler(variant):
        return FlowMatchEulerDiscreteScheduler.from_pretrained(CONFIGS / variant, subfolder="scheduler").config

    dev, schnell = scheduler("flux1-dev"), scheduler("flux1-schnell")
    assert (dev.use_dynamic_shifting, dev.base_shift, dev.max_shift, dev.base_image_seq_len,
            dev.max_image_seq_len) == (True, 0.5, 1.15, 256, 4096)
    assert (schnell.use_dynamic_shifting, schnell.shift) == (False, 1.0)
    assert scheduler("sd35-large").shift == scheduler("sd35-medium").shift == 3.0
    assert scheduler("flux2-klein-4b").use_dynamic_shifting  # Flux2KleinPipeline always passes mu
    # Flux.2 [klein] stacks Qwen3 hidden states 9, 18 and 27: the transformer takes 3 x hidden_size.
    for variant in ("flux2-klein-4b", "flux2-klein-9b"):
        qwen = cfg(variant, "text_encoder")
        assert cfg(variant, "transformer")["joint_attention_dim"] == 3 * qwen["hidden_size"]
        assert qwen["num_hidden_layers"] >= 28
    assert cfg("zimage-turbo", "transformer")["cap_feat_dim"] == cfg("zimage-turbo", "text_encoder")["hidden_size"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_pipeline_constructs_from_the_folder(variant):
    """model_index.json names what the diffusers pipeline's constructor takes (meta models, real tokenizers)."""
    import diffusers
    from transformers import AutoTokenizer

    folder = CONFIGS / variant
    index = json.loads((folder / "model_index.json").read_text())
    clip_tokenizers = {"tokenizer": CONFIGS / "sd15" / "tokenizer", "tokenizer_2": CONFIGS / "sdxl" / "tokenizer_2"}
    components = dict(_models(variant))  # a copy: the cached dict stays as built
    for part, spec in index.items():
        if part.startswith("_") or part in components:
            continue
        if not isinstance(spec, list):
            components[part] = spec  # a config value such as Flux2KleinPipeline's is_distilled
        elif spec[0] is None:
            components[part] = None
        elif part == "scheduler":
            components[part] = getattr(diffusers, spec[1]).from_pretrained(folder, subfolder="scheduler")
        else:
            library = "t5" if spec[1] == "T5TokenizerFast" else "qwen3" if spec[1].startswith("Qwen2") else "clip"
            path = {"t5": T5, "qwen3": QWEN3}.get(library) or clip_tokenizers[part]
            components[part] = AutoTokenizer.from_pretrained(path, local_files_only=True)
    pipe = getattr(diffusers, index["_class_name"])(**components)
    assert type(pipe).__name__ == index["_class_name"]
    if "is_distilled" in index:
        assert pipe.config.is_distilled is index["is_distilled"]


# --- the users' file layout ----------------------------------------------------------------------
# Each transformer's diffusers state dict, renamed back to the original (BFL / Stability / Tongyi)
# layout that single files use. diffusers' infer_diffusers_model_type must classify it, and its own
# conversion must turn it back into exactly the model's keys and shapes.

def _cat(sd, *keys):
    return torch.cat([sd[k] for k in keys], dim=0)


def _swap(t):  # diffusers' AdaLayerNormContinuous is (scale, shift); the originals are (shift, scale)
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _flux1_original(sd: dict) -> dict:
    out = {}
    top = {"x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
           "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
           "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
           "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
           "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
           "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
           "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer"}
    double = {"norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin", "attn.to_out.0": "img_attn.proj",
              "attn.to_add_out": "txt_attn.proj", "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
              "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2"}
    double_norms = {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
                    "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm"}
    for p in ("weight", "bias"):
        for new, old in top.items():
            if f"{new}.{p}" in sd:
                out[f"{old}.{p}"] = sd[f"{new}.{p}"]
        out[f"final_layer.adaLN_modulation.1.{p}"] = _swap(sd[f"norm_out.linear.{p}"])
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks.")}
    for i in blocks:
        b, o = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for p in ("weight", "bias"):
            for new, old in double.items():
                out[f"{o}{old}.{p}"] = sd[f"{b}{new}.{p}"]
            out[f"{o}img_attn.qkv.{p}"] = _cat(sd, *(f"{b}attn.to_{x}.{p}" for x in "qkv"))
            out[f"{o}txt_attn.qkv.{p}"] = _cat(sd, *(f"{b}attn.add_{x}_proj.{p}" for x in "qkv"))
        for new, old in double_norms.items():
            out[f"{o}{old}.scale"] = sd[f"{b}{new}.weight"]
    singles = {int(k.split(".")[1]) for k in sd if k.startswith("single_transformer_blocks.")}
    for i in singles:
        b, o = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{o}modulation.lin.{p}"] = sd[f"{b}norm.linear.{p}"]
            out[f"{o}linear1.{p}"] = _cat(sd, *(f"{b}attn.to_{x}.{p}" for x in "qkv"), f"{b}proj_mlp.{p}")
            out[f"{o}linear2.{p}"] = sd[f"{b}proj_out.{p}"]
        out[f"{o}norm.query_norm.scale"] = sd[f"{b}attn.norm_q.weight"]
        out[f"{o}norm.key_norm.scale"] = sd[f"{b}attn.norm_k.weight"]
    return out


def _sd3_original(sd: dict) -> dict:
    out = {"pos_embed": sd["pos_embed.pos_embed"]}
    top = {"pos_embed.proj": "x_embedder.proj", "context_embedder": "context_embedder", "proj_out": "final_layer.linear",
           "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
           "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
           "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
           "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2"}
    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks.")})
    for p in ("weight", "bias"):
        for new, old in top.items():
            out[f"{old}.{p}"] = sd[f"{new}.{p}"]
        out[f"final_layer.adaLN_modulation.1.{p}"] = _swap(sd[f"norm_out.linear.{p}"])
        for i in blocks:
            b, x, c = f"transformer_blocks.{i}.", f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block."
            last = i == blocks[-1]
            out[f"{x}attn.qkv.{p}"] = _cat(sd, *(f"{b}attn.to_{q}.{p}" for q in "qkv"))
            out[f"{c}attn.qkv.{p}"] = _cat(sd, *(f"{b}attn.add_{q}_proj.{p}" for q in "qkv"))
            out[f"{x}attn.proj.{p}"] = sd[f"{b}attn.to_out.0.{p}"]
            out[f"{x}adaLN_modulation.1.{p}"] = sd[f"{b}norm1.linear.{p}"]
            context_mod = sd[f"{b}norm1_context.linear.{p}"]
            out[f"{c}adaLN_modulation.1.{p}"] = _swap(context_mod) if last else context_mod
            out[f"{x}mlp.fc1.{p}"] = sd[f"{b}ff.net.0.proj.{p}"]
            out[f"{x}mlp.fc2.{p}"] = sd[f"{b}ff.net.2.{p}"]
            if not last:  # the last context block only modulates: no projection, no MLP
                out[f"{c}attn.proj.{p}"] = sd[f"{b}attn.to_add_out.{p}"]
                out[f"{c}mlp.fc1.{p}"] = sd[f"{b}ff_context.net.0.proj.{p}"]
                out[f"{c}mlp.fc2.{p}"] = sd[f"{b}ff_context.net.2.{p}"]
            if f"{b}attn2.to_q.{p}" in sd:  # SD3.5 medium's MMDiT-X second self-attention
                out[f"{x}attn2.qkv.{p}"] = _cat(sd, *(f"{b}attn2.to_{q}.{p}" for q in "qkv"))
                out[f"{x}attn2.proj.{p}"] = sd[f"{b}attn2.to_out.0.{p}"]
    for i in blocks:
        b, x, c = f"transformer_blocks.{i}.", f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block."
        out[f"{x}attn.ln_q.weight"], out[f"{x}attn.ln_k.weight"] = sd[f"{b}attn.norm_q.weight"], sd[f"{b}attn.norm_k.weight"]
        out[f"{c}attn.ln_q.weight"] = sd[f"{b}attn.norm_added_q.weight"]
        out[f"{c}attn.ln_k.weight"] = sd[f"{b}attn.norm_added_k.weight"]
        if f"{b}attn2.norm_q.weight" in sd:
            out[f"{x}attn2.ln_q.weight"], out[f"{x}attn2.ln_k.weight"] = (
                sd[f"{b}attn2.norm_q.weight"], sd[f"{b}attn2.norm_k.weight"])
    return out


def _flux2_original(sd: dict) -> dict:
    top = {"x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
           "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
           "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
           "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
           "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
           "single_stream_modulation.linear": "single_stream_modulation.lin"}
    double = {"attn.to_out.0.weight": "img_attn.proj.weight", "attn.to_add_out.weight": "txt_attn.proj.weight",
              "ff.linear_in.weight": "img_mlp.0.weight", "ff.linear_out.weight": "img_mlp.2.weight",
              "ff_context.linear_in.weight": "txt_mlp.0.weight", "ff_context.linear_out.weight": "txt_mlp.2.weight",
              "attn.norm_q.weight": "img_attn.norm.query_norm.scale", "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
              "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
              "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale"}
    single = {"attn.to_qkv_mlp_proj.weight": "linear1.weight", "attn.to_out.weight": "linear2.weight",
              "attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale"}
    out = {f"{old}.weight": sd[f"{new}.weight"] for new, old in top.items()}
    out["final_layer.adaLN_modulation.1.weight"] = _swap(sd["norm_out.linear.weight"])
    for i in {int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks.")}:
        b, o = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        out.update({o + old: sd[b + new] for new, old in double.items()})
        out[f"{o}img_attn.qkv.weight"] = _cat(sd, *(f"{b}attn.to_{x}.weight" for x in "qkv"))
        out[f"{o}txt_attn.qkv.weight"] = _cat(sd, *(f"{b}attn.add_{x}_proj.weight" for x in "qkv"))
    for i in {int(k.split(".")[1]) for k in sd if k.startswith("single_transformer_blocks.")}:
        b, o = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        out.update({o + old: sd[b + new] for new, old in single.items()})
    return out


def _zimage_original(sd: dict) -> dict:
    renames = {"all_final_layer.2-1.": "final_layer.", "all_x_embedder.2-1.": "x_embedder.",
               ".attention.to_out.0.": ".attention.out.", ".attention.norm_q.": ".attention.q_norm.",
               ".attention.norm_k.": ".attention.k_norm."}
    out = {}
    for key, value in sd.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q." in key:
            out[key.replace(".to_q.", ".qkv.")] = _cat(sd, key, key.replace(".to_q.", ".to_k."),
                                                       key.replace(".to_q.", ".to_v."))
            continue
        for new, old in renames.items():
            key = key.replace(new, old)
        out[key] = value
    return out


LAYOUTS = {  # variant: (to the original layout, diffusers' model type for it)
    "flux1-dev": (_flux1_original, "flux-dev"),
    "flux1-schnell": (_flux1_original, "flux-schnell"),
    "sd35-medium": (_sd3_original, "sd35_medium"),
    "sd35-large": (_sd3_original, "sd35_large"),
    "zimage-turbo": (_zimage_original, "z-image-turbo"),
    # diffusers 0.42.1 has no klein model type: every Flux.2 file is "flux-2-dev", whose default
    # config is the 32B FLUX.2 [dev]. Loading a klein file therefore needs config=configs/<variant>.
    "flux2-klein-4b": (_flux2_original, "flux-2-dev"),
    "flux2-klein-9b": (_flux2_original, "flux-2-dev"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_transformer_round_trips_through_the_single_file_layout(variant):
    from diffusers.loaders import single_file_model, single_file_utils

    transformer = _models(variant)["transformer"]
    ours = {k: v.shape for k, v in transformer.state_dict().items()}
    to_original, model_type = LAYOUTS[variant]
    original = to_original(transformer.state_dict())
    markers = single_file_utils.CHECKPOINT_KEY_NAMES
    assert single_file_utils.infer_diffusers_model_type(original) == model_type
    # Files saved by ComfyUI carry a prefix; diffusers classifies those the same way.
    prefixed = {f"model.diffusion_model.{k}": v for k, v in original.items()}
    assert single_file_utils.infer_diffusers_model_type(prefixed) == model_type
    family = {"flux1": "flux", "sd35-m": "sd3", "sd35-l": "sd35_large", "zimage": "z-image-turbo",
              "flux2-": "flux2"}
    marker = next(v for k, v in family.items() if variant.startswith(k))
    assert any(key in original for key in markers[marker])

    convert = single_file_model.SINGLE_FILE_LOADABLE_CLASSES[type(transformer).__name__]["checkpoint_mapping_fn"]
    checkpoint = dict(original)
    converted = convert(checkpoint, config=transformer.config)
    assert {k: v.shape for k, v in converted.items()} == ours
    assert not checkpoint  # every tensor of the file was used


@pytest.mark.parametrize("variant", VARIANTS)
def test_from_single_file_loads_the_layout_with_the_shipped_config(variant):
    """The worker's call: from_single_file(file, config=configs/<variant>, subfolder="transformer"), offline.

    The "file" is the original-layout state dict above, on the meta device (from_single_file takes a
    dict as well as a path). It raises on any shape that differs from the config; it does not notice
    missing keys, which the round trip above covers.
    """
    transformer = _models(variant)["transformer"]
    original = LAYOUTS[variant][0](transformer.state_dict())
    # config must be a str: diffusers 0.42.1 rejects a Path ("Invalid `config` argument").
    with torch.device("meta"):  # else SD3's pos_embed buffer is built for real (0.9 GB for SD3.5 medium)
        loaded = type(transformer).from_single_file(original, config=str(CONFIGS / variant), subfolder="transformer",
                                                    device="meta", local_files_only=True)
    assert dict(loaded.config) == dict(transformer.config)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {
        k: v.shape for k, v in transformer.state_dict().items()}
