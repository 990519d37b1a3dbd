"""LoRAs from prompt tags: kohya files for SD1.5 and SDXL, weights, several at once, removed after
the task, hashes in the infotext, the spec's lora and lora_weight axes; LyCORIS LoHa and LoKr
files (applied by hand in worker/lora.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from farm.expand import expand
from farm.models import lora_hash
from farm.spec import parse_spec
from model_tree import a1111_tree, render, tiny_task
from worker.context import TaskError, WorkerContext


@pytest.fixture(scope="session")
def tree(tmp_path_factory):
    return a1111_tree(tmp_path_factory)


@pytest.fixture(scope="module")
def ctx(tree):
    return WorkerContext(models_dir=tree)


def test_lora_tags_change_the_image_and_are_removed_after(ctx, tree, tmp_path):
    base, params = render(ctx, tiny_task(), tmp_path)
    assert "Lora hashes" not in params
    styled, params = render(ctx, tiny_task(prompt="a red robot <lora:style15:0.8>"), tmp_path)
    assert np.abs(styled - base).max() > 2
    assert params["Lora hashes"] == f"style15: {lora_hash(tree / 'models/Lora/style15.safetensors')[:12]}"
    # The next task renders the bare checkpoint again (uint8 pixels: exactly).
    again, _ = render(ctx, tiny_task(seed=7, prompt="a red robot", cfg=7.0, steps=2, negative_prompt="blurry",
                                     filename="again-[task_id]"), tmp_path)
    assert np.array_equal(again, base)
    assert not any(ctx.cache.get(tree / "models/Stable-diffusion/tiny15.safetensors").get_list_adapters().values())


def test_te_and_unet_weights_and_several_loras(ctx, tmp_path):
    base, _ = render(ctx, tiny_task(), tmp_path)
    zero, _ = render(ctx, tiny_task(prompt="a red robot <lora:style15:0:0>"), tmp_path)
    assert np.abs(zero - base).max() <= 1  # weight 0 for both: the base model
    te_only, _ = render(ctx, tiny_task(prompt="a red robot <lora:style15:1:0>"), tmp_path)
    unet_only, _ = render(ctx, tiny_task(prompt="a red robot <lora:style15:0:1>"), tmp_path)
    both, _ = render(ctx, tiny_task(prompt="a red robot <lora:style15:1>"), tmp_path)
    assert len({te_only.tobytes(), unet_only.tobytes(), both.tobytes(), base.tobytes()}) == 4
    two, params = render(ctx, tiny_task(prompt="<lora:style15:1> a red robot <lora:detail15:0.7>"), tmp_path)
    assert np.abs(two - both).max() > 2
    assert [p.split(":")[0] for p in params["Lora hashes"].split(", ")] == ["style15", "detail15"]


def test_sdxl_lora(ctx, tmp_path):
    base, _ = render(ctx, tiny_task("tinyxl"), tmp_path)
    styled, params = render(ctx, tiny_task("tinyxl", prompt="a red robot <lora:stylexl:1>"), tmp_path)
    assert np.abs(styled - base).max() > 2 and "stylexl" in params["Lora hashes"]
    again, _ = render(ctx, tiny_task("tinyxl", filename="again-[task_id]"), tmp_path)
    assert np.array_equal(again, base)


def test_wrong_family_or_unknown_lora_fails_the_task_only(ctx, tmp_path):
    with pytest.raises(TaskError, match=r"stylexl\.safetensors: an SDXL LoRA cannot be used with an SD1.5 checkpoint"):
        render(ctx, tiny_task(prompt="a red robot <lora:stylexl:1>"), tmp_path)
    with pytest.raises(TaskError, match=r"unknown lora 'styel15' \(did you mean 'style15'\?\)"):
        render(ctx, tiny_task(prompt="<lora:styel15:1> a red robot"), tmp_path)
    with pytest.raises(TaskError, match="weights must be numbers"):
        render(ctx, tiny_task(prompt="<lora:style15:lots> a red robot"), tmp_path)
    base, _ = render(ctx, tiny_task(), tmp_path)  # and the model is clean for the next task
    clean, _ = render(ctx, tiny_task(filename="clean-[task_id]"), tmp_path)
    assert np.array_equal(base, clean)


def test_lora_and_lora_weight_axes(tree):
    spec = parse_spec(
        "prompt: a cat\ncheckpoint: tiny15\nseed: 1\nlora: [None, style15]\nlora_weight: [0.5, 1]\n",
        "job.yaml", tree,
    )
    prompts = [t.prompt for t in expand(spec)]
    assert prompts == ["a cat", "a cat", "a cat <lora:style15:0.5>", "a cat <lora:style15:1>"]
    with pytest.raises(Exception, match="unknown lora 'nope'"):
        parse_spec("prompt: a cat\ncheckpoint: tiny15\nseed: 1\nlora: nope\n", "job.yaml", tree)
    with pytest.raises(Exception, match="lora_weight: sweeps the weight of the 'lora' axis"):
        parse_spec("prompt: a cat\ncheckpoint: tiny15\nseed: 1\nlora_weight: [1, 2]\n", "job.yaml", tree)


# --- LoRAs and embeddings pinned by sha256 (task.lora_hashes / embedding_hashes; worker/prepare.py) ----

def test_a_same_named_lora_with_other_weights_is_replaced_by_the_pinned_file(ctx, tree, tmp_path, monkeypatch):
    """The task pins style15 to detail15's bytes (as if the coordinator's style15 were those): the
    worker's own style15 is not used; the file with the pin's hash (here under another name) is,
    and the infotext's `Lora hashes` is that file's. Without a copy anywhere: one line."""
    import farm.hashes
    from farm.hashes import sha256_file

    pinned = tree / "models/Lora/detail15.safetensors"
    want, _ = render(ctx, tiny_task(prompt="a red robot <lora:detail15:0.8>"), tmp_path)
    task = tiny_task(prompt="a red robot <lora:style15:0.8>", lora_hashes={"style15": sha256_file(pinned)})
    got, params = render(ctx, task, tmp_path)
    assert np.array_equal(got, want)
    assert params["Lora hashes"] == f"style15: {lora_hash(pinned)[:12]}"
    plain, _ = render(ctx, tiny_task(prompt="a red robot <lora:style15:0.8>"), tmp_path / "plain")  # same task id
    assert np.abs(plain - got).max() > 2  # the name alone gives other pixels
    # `farm info --as-spec` of that image notes that this folder's style15 is not the one it used
    from farm.infotext import read_parameters
    from farm.recreate import spec_from_infotext

    (image,) = (tmp_path / task.job / "images").glob(f"*{task.id}*.png")
    spec = spec_from_infotext(read_parameters(image), tree)
    assert f"note: LoRA 'style15' at {tree / 'models/Lora/style15.safetensors'} has hash " in spec
    assert f"the image used {lora_hash(pinned)[:12]}: a re-render with it differs" in spec
    (plain_image,) = (tmp_path / "plain" / task.job / "images").glob("*.png")
    assert "note: LoRA" not in spec_from_infotext(read_parameters(plain_image), tree)
    # the pins' files are hashed once per path, size and mtime, not per task
    reads = []
    monkeypatch.setattr(farm.hashes, "_sha256_from", lambda *a: reads.append(a) or "")
    render(ctx, tiny_task(seed=9, prompt=task.prompt, lora_hashes=task.lora_hashes), tmp_path)
    assert reads == []
    monkeypatch.undo()
    wrong = tiny_task(prompt="a red robot <lora:style15:0.8>", lora_hashes={"style15": "0" * 64})
    with pytest.raises(TaskError) as e:
        render(ctx, wrong, tmp_path / "wrong")
    line = str(e.value)
    own = sha256_file(tree / "models/Lora/style15.safetensors")[:10]
    assert line.startswith(f"LoRA 'style15' at {tree / 'models/Lora/style15.safetensors'} has hash {own}, "
                           "but the job pins 0000000000") and "push it to the depot" in line and "\n" not in line
    # a LoRA the task does not use is not checked; the worker goes on rendering
    render(ctx, tiny_task(lora_hashes={"style15": "0" * 64}), tmp_path)
    # a pin names cache paths and depot keys: anything but 64 hex digits is no task
    from pydantic import ValidationError

    for bad in ("../../etc/passwd", "0" * 63, "G" * 64):
        with pytest.raises(ValidationError):
            tiny_task(lora_hashes={"style15": bad})
        with pytest.raises(ValidationError):
            tiny_task(embedding_hashes={"emb15": bad})


def test_a_same_named_embedding_with_other_weights_is_replaced_by_the_pinned_file(tree, tmp_path):
    import os
    import shutil

    from farm.hashes import sha256_file
    from worker.tiny import make_tiny_embedding

    good = tree / "embeddings/emb15.safetensors"
    other = tmp_path / "other"  # a PC whose emb15 has other weights, and the good one as 'good15'
    make_tiny_embedding(other, "emb15", seed=11)
    shutil.copy(good, other / "embeddings/good15.safetensors")
    mixed = WorkerContext(models_dir=f"{other}{os.pathsep}{tree}")
    want, _ = render(WorkerContext(models_dir=tree), tiny_task(prompt="a red robot emb15"), tmp_path / "want")
    plain, _ = render(mixed, tiny_task(prompt="a red robot emb15"), tmp_path / "plain")  # one task id, 3 folders
    assert np.abs(plain - want).max() > 2  # by name: the other weights
    pinned = tiny_task(prompt="a red robot emb15", embedding_hashes={"emb15": sha256_file(good)})
    got, params = render(mixed, pinned, tmp_path / "pinned")
    assert np.array_equal(got, want) and params["TI hashes"] == f"emb15: {sha256_file(good)[:12]}"
    missing = tiny_task(prompt="a red robot nothere", embedding_hashes={"nothere": "1" * 64})
    with pytest.raises(TaskError, match=r"^embedding 'nothere' \(pinned 1111111111\) is not on this worker"):
        render(mixed, missing, tmp_path)


# --- LyCORIS LoHa / LoKr (worker/lora.py applies them by hand) -----------------------------------

@pytest.fixture(scope="module")
def lyco_tree(tree, tmp_path_factory):
    """An A1111 install with the session's checkpoints and LoRAs (linked) and tiny LyCORIS files in
    models/LyCORIS/: its own root, so the shared tree's file lists stay as other tests expect."""
    from safetensors.torch import load_file, save_file

    from worker.tiny import make_tiny_loha, make_tiny_lokr

    root = tmp_path_factory.mktemp("lycoris")
    models = root / "models"
    models.mkdir()
    for folder in ("Stable-diffusion", "Lora"):
        (models / folder).symlink_to(tree / "models" / folder, target_is_directory=True)
    make_tiny_loha(models, "loha15", seed=11)  # 3x3 convs Tucker-decomposed
    make_tiny_loha(models, "mixed15", seed=12, tucker=False, locon_convs=True)  # LoHa + plain LoCon modules
    make_tiny_lokr(models, "lokr15", seed=13, factor_w1=True)  # w1 and w2 factorised, convs
    make_tiny_lokr(models, "lokrfull15", seed=14, factor_w2=False)  # both full: scale 1
    make_tiny_loha(models, "lohaxl", sdxl=True, seed=15)
    make_tiny_lokr(models, "lokrxl", sdxl=True, seed=16, factor_w1=True, tucker=True)
    state = load_file(str(models / "LyCORIS/loha15.safetensors"))
    state = {k.replace("lora_unet_down_blocks_1_attentions_0_proj_in", "lora_unet_down_blocks_7_nope"): v
             for k, v in state.items()}
    save_file(state, str(models / "LyCORIS/badlyco.safetensors"))
    return root


@pytest.fixture(scope="module")
def lctx(lyco_tree):
    return WorkerContext(models_dir=lyco_tree)


def _weights(pipe) -> dict:
    """Every UNet and text-encoder tensor, copied."""
    parts = ("unet", "text_encoder", "text_encoder_2")
    return {f"{c}.{k}": v.clone() for c in parts if getattr(pipe, c, None) is not None
            for k, v in getattr(pipe, c).state_dict().items()}


def _same_weights(pipe, snapshot: dict) -> bool:
    now = _weights(pipe)
    return now.keys() == snapshot.keys() and all(torch.equal(now[k], v) for k, v in snapshot.items())


def test_loha_and_lokr_change_the_image_and_are_removed_after(lctx, lyco_tree, tmp_path):
    base, _ = render(lctx, tiny_task(), tmp_path)
    pipe = lctx.cache.get(lyco_tree / "models/Stable-diffusion/tiny15.safetensors")
    bare = _weights(pipe)
    images = {}
    for name in ("loha15", "mixed15", "lokr15", "lokrfull15"):
        images[name], params = render(lctx, tiny_task(prompt=f"a red robot <lora:{name}:1>"), tmp_path)
        assert np.abs(images[name] - base).max() > 2, name
        assert params["Lora hashes"] == f"{name}: {lora_hash(lyco_tree / f'models/LyCORIS/{name}.safetensors')[:12]}"
        assert _same_weights(pipe, bare), f"{name} left weights behind"
        again, _ = render(lctx, tiny_task(filename=f"again-{name}-[task_id]"), tmp_path)
        assert np.array_equal(again, base), name
    assert len({im.tobytes() for im in images.values()}) == 4
    # A plain LoRA (peft) and a LoHa (patched weights) in one task; then the bare model again.
    both, params = render(lctx, tiny_task(prompt="<lora:style15:1> a red robot <lora:loha15:1>"), tmp_path)
    alone, _ = render(lctx, tiny_task(prompt="a red robot <lora:style15:1>"), tmp_path)
    assert np.abs(both - images["loha15"]).max() > 2 and np.abs(both - alone).max() > 2
    assert [p.split(":")[0] for p in params["Lora hashes"].split(", ")] == ["style15", "loha15"]
    again, _ = render(lctx, tiny_task(filename="again-both-[task_id]"), tmp_path)
    assert np.array_equal(again, base) and _same_weights(pipe, bare)
    assert not any(pipe.get_list_adapters().values())


def test_lycoris_weights_te_and_unet(lctx, tmp_path):
    base, _ = render(lctx, tiny_task(), tmp_path)
    zero, _ = render(lctx, tiny_task(prompt="a red robot <lora:lokr15:0>"), tmp_path)
    assert np.array_equal(zero, base)  # weight 0: not one weight changed
    te_only, _ = render(lctx, tiny_task(prompt="a red robot <lora:loha15:1:0>"), tmp_path)
    unet_only, _ = render(lctx, tiny_task(prompt="a red robot <lora:loha15:0:1>"), tmp_path)
    both, _ = render(lctx, tiny_task(prompt="a red robot <lora:loha15:1>"), tmp_path)
    half, _ = render(lctx, tiny_task(prompt="a red robot <lora:loha15:0.5>"), tmp_path)
    assert len({im.tobytes() for im in (te_only, unet_only, both, half, base)}) == 5


def _tucker_by_hand(t, a, b):
    """Sum over the core's entries of t[i, j] * outer(a[i], b[j]): (out, in, kh, kw)."""
    out = torch.zeros(a.shape[1], b.shape[1], *t.shape[2:])
    for i in range(t.shape[0]):
        for j in range(t.shape[1]):
            out += torch.outer(a[i], b[j])[:, :, None, None] * t[i, j]
    return out


def test_lycoris_deltas_match_lycoris_math(lctx, lyco_tree):
    """The patched weights equal original + weight * alpha/rank * delta, computed here independently
    of worker/lora.py; remove_loras then restores every weight bit for bit."""
    from safetensors.torch import load_file

    from farm.models import Registry
    from farm.prompts import LoraRef
    from worker.lora import apply_loras, remove_loras

    render(lctx, tiny_task(), lyco_tree / "out")  # loads the pipeline into the cache
    pipe = lctx.cache.get(lyco_tree / "models/Stable-diffusion/tiny15.safetensors")
    bare = _weights(pipe)
    registry = Registry(lyco_tree)
    loha = load_file(str(lyco_tree / "models/LyCORIS/loha15.safetensors"))
    lokr = load_file(str(lyco_tree / "models/LyCORIS/lokr15.safetensors"))
    full = load_file(str(lyco_tree / "models/LyCORIS/lokrfull15.safetensors"))

    def expect(key, delta, te, unet):
        return bare[key] + (unet if key.startswith("unet.") else te) * delta

    def patched(key):
        return _weights(pipe)[key]

    try:
        hashes = apply_loras(pipe, [LoraRef("loha15", 0.5, 0.7)], registry)
        assert hashes == {"loha15": lora_hash(lyco_tree / "models/LyCORIS/loha15.safetensors")[:12]}
        # LoHa, a Linear of the UNet: (w1a @ w1b) * (w2a @ w2b) * alpha / rank, rank 4, alpha 2.
        m = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
        delta = (loha[f"{m}.hada_w1_a"] @ loha[f"{m}.hada_w1_b"]) * (loha[f"{m}.hada_w2_a"] @ loha[f"{m}.hada_w2_b"]) * 2 / 4
        key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"
        assert not torch.equal(patched(key), bare[key])
        assert torch.allclose(patched(key), expect(key, delta, 0.5, 0.7), atol=1e-6, rtol=0)
        # LoHa, a text-encoder Linear, at the te weight.
        m = "lora_te_text_model_encoder_layers_2_self_attn_v_proj"
        delta = (loha[f"{m}.hada_w1_a"] @ loha[f"{m}.hada_w1_b"]) * (loha[f"{m}.hada_w2_a"] @ loha[f"{m}.hada_w2_b"]) * 2 / 4
        key = next(k for k in bare if k.startswith("text_encoder.") and k.endswith("layers.2.self_attn.v_proj.weight"))
        assert torch.allclose(patched(key), expect(key, delta, 0.5, 0.7), atol=1e-6, rtol=0)
        # LoHa, a Tucker-decomposed 3x3 conv.
        m = "lora_unet_down_blocks_1_resnets_0_conv1"
        delta = (_tucker_by_hand(loha[f"{m}.hada_t1"], loha[f"{m}.hada_w1_a"], loha[f"{m}.hada_w1_b"])
                 * _tucker_by_hand(loha[f"{m}.hada_t2"], loha[f"{m}.hada_w2_a"], loha[f"{m}.hada_w2_b"]) * 2 / 4)
        key = "unet.down_blocks.1.resnets.0.conv1.weight"
        assert delta.shape == (64, 32, 3, 3)
        assert torch.allclose(patched(key), expect(key, delta, 0.5, 0.7), atol=1e-6, rtol=0)
        remove_loras(pipe)
        assert _same_weights(pipe, bare)

        apply_loras(pipe, [LoraRef("lokr15", 1.0, 0.8), LoraRef("lokrfull15", 0.0, 0.3)], registry)
        # LoKr with factorised w1 and w2 on a 3x3 conv: kron(w1a @ w1b, (w2a @ w2b) as (b, d, 3, 3)),
        # as LyCORIS builds it in 4-D, times alpha/rank = 1/2; plus the full LoKr (scale 1) on top.
        m = "lora_unet_down_blocks_0_resnets_1_conv1"
        w1 = lokr[f"{m}.lokr_w1_a"] @ lokr[f"{m}.lokr_w1_b"]
        w2 = (lokr[f"{m}.lokr_w2_a"] @ lokr[f"{m}.lokr_w2_b"]).reshape(lokr[f"{m}.lokr_w2_a"].shape[0], -1, 3, 3)
        delta_kr = torch.kron(w1[:, :, None, None], w2) * 1 / 2
        full_kr = torch.kron(full[f"{m}.lokr_w1"][:, :, None, None], full[f"{m}.lokr_w2"])  # both full: scale 1
        key = "unet.down_blocks.0.resnets.1.conv1.weight"
        assert delta_kr.shape == full_kr.shape == (32, 32, 3, 3)
        delta = 0.8 * delta_kr + 0.3 * full_kr
        assert torch.allclose(patched(key), bare[key] + delta, atol=1e-5, rtol=0)
        # The 1x1 conv proj_in, and a text-encoder Linear that only lokr15 changes (lokrfull15 at te 0).
        m = "lora_unet_down_blocks_1_attentions_0_proj_in"
        w1 = lokr[f"{m}.lokr_w1_a"] @ lokr[f"{m}.lokr_w1_b"]
        delta = (0.8 * torch.kron(w1, lokr[f"{m}.lokr_w2_a"] @ lokr[f"{m}.lokr_w2_b"]) / 2
                 + 0.3 * torch.kron(full[f"{m}.lokr_w1"], full[f"{m}.lokr_w2"].flatten(1))).reshape(64, 64, 1, 1)
        key = "unet.down_blocks.1.attentions.0.proj_in.weight"
        assert torch.allclose(patched(key), bare[key] + delta, atol=1e-5, rtol=0)
        m = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
        delta = torch.kron(lokr[f"{m}.lokr_w1_a"] @ lokr[f"{m}.lokr_w1_b"], lokr[f"{m}.lokr_w2_a"] @ lokr[f"{m}.lokr_w2_b"]) / 2
        key = next(k for k in bare if k.startswith("text_encoder.") and k.endswith("layers.0.self_attn.q_proj.weight"))
        assert torch.allclose(patched(key), expect(key, delta, 1.0, 0.0), atol=1e-6, rtol=0)
    finally:
        remove_loras(pipe)
    assert _same_weights(pipe, bare)


def test_sdxl_loha_and_lokr(lctx, lyco_tree, tmp_path):
    base, _ = render(lctx, tiny_task("tinyxl"), tmp_path)
    pipe = lctx.cache.get(lyco_tree / "models/Stable-diffusion/tinyxl.safetensors")
    bare = _weights(pipe)
    for name in ("lohaxl", "lokrxl"):  # LDM-named UNet modules, lora_te1_/lora_te2_
        styled, params = render(lctx, tiny_task("tinyxl", prompt=f"a red robot <lora:{name}:1>"), tmp_path)
        assert np.abs(styled - base).max() > 2 and name in params["Lora hashes"]
        assert _same_weights(pipe, bare)
    again, _ = render(lctx, tiny_task("tinyxl", filename="again-[task_id]"), tmp_path)
    assert np.array_equal(again, base)
    with pytest.raises(TaskError, match=r"lohaxl\.safetensors: an SDXL LoRA cannot be used with an SD1.5 checkpoint"):
        render(lctx, tiny_task(prompt="a red robot <lora:lohaxl:1>"), tmp_path)


def test_lycoris_files_are_listed_as_loras(lyco_tree):
    from farm.models import Registry

    files = Registry(lyco_tree).files("lora")
    for name, family in (("loha15", "SD1.5"), ("lokr15", "SD1.5"), ("mixed15", "SD1.5"),
                         ("lohaxl", "SDXL"), ("lokrxl", "SDXL")):
        assert files[name].path.parent.name == "LyCORIS" and files[name].kind == "lora"
        assert files[name].family() == family, name
        assert files[name].a1111_hash() == lora_hash(files[name].path)[:12]


def test_unknown_lycoris_module_fails_with_one_line(lctx, tmp_path):
    base, _ = render(lctx, tiny_task(), tmp_path)
    with pytest.raises(TaskError) as failed:
        render(lctx, tiny_task(prompt="a red robot <lora:badlyco:1>"), tmp_path)
    message = str(failed.value)
    assert "badlyco.safetensors: unknown module 'lora_unet_down_blocks_7_nope'" in message
    assert "\n" not in message and "Traceback" not in message
    clean, _ = render(lctx, tiny_task(filename="clean-[task_id]"), tmp_path)  # nothing was patched
    assert np.array_equal(base, clean)


def test_lycoris_on_half_precision_weights(lyco_tree):
    """Under a memory profile the weights may be fp16/bf16: the delta is computed in fp32, the sum
    cast back to the weight's dtype, and the originals come back exactly."""
    from safetensors.torch import load_file

    from worker.lora import apply_lycoris, remove_loras
    from worker.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    for dtype in (torch.bfloat16, torch.float16):
        for model in (pipe.unet, pipe.text_encoder):
            model.to(dtype)
        bare = _weights(pipe)
        state = load_file(str(lyco_tree / "models/LyCORIS/lokr15.safetensors"))
        apply_lycoris(pipe, state, "lokr15.safetensors", 1.0, 1.0)
        m = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
        delta = torch.kron(state[f"{m}.lokr_w1_a"] @ state[f"{m}.lokr_w1_b"],
                           state[f"{m}.lokr_w2_a"] @ state[f"{m}.lokr_w2_b"]) / 2
        key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
        weight = _weights(pipe)[key]
        assert weight.dtype == dtype and not torch.equal(weight, bare[key])
        assert torch.allclose(weight.float(), (bare[key].float() + delta).to(dtype).float(), atol=1e-2, rtol=0)
        remove_loras(pipe)
        assert _same_weights(pipe, bare)
