"""The model registry (A1111 and ComfyUI folders, references, hashes, families), SDXL checkpoints,
safe loading of pickles, and corrupt files."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import farm
from farm import hashes
from farm.families import file_family
from farm.model_files import ModelFileError
from farm.models import Registry, lora_hash
from farm.expand import expand
from farm.spec import parse_spec
from farm.store import open_store
from farm.task import RenderTask
from model_tree import a1111_tree, comfyui_tree, run_task
from worker.pipelines import ModelLoadError, load_pipeline
from worker.context import TaskError, WorkerContext
from factories import make_task


@pytest.fixture(scope="session")
def tree(tmp_path_factory) -> Path:
    return a1111_tree(tmp_path_factory)


def _task(checkpoint: str, **overrides) -> RenderTask:
    return make_task(**{"job": "models", "checkpoint": checkpoint, **overrides})


def _pixels(store_dir: Path, task: RenderTask) -> np.ndarray:
    from PIL import Image

    (path,) = (store_dir / task.job / "images").glob(f"*{task.id}*.png")
    return np.asarray(Image.open(path), dtype=np.int16)


# --- the registry ---------------------------------------------------------------------------

def test_registry_finds_every_kind_in_a1111_and_comfyui_folders(tree, tmp_path):
    comfy = comfyui_tree(tree, tmp_path / "ComfyUI")
    expected = {
        "checkpoint": {"tiny15", "tinyxl"},
        "lora": {"style15", "detail15", "stylexl"},
        "vae": {"tinyvae"},
        "embedding": {"emb15", "old15", "embxl"},
    }
    for root in (tree, tree / "models", comfy):
        registry = Registry(root)
        for kind, names in expected.items():
            assert {m.name for m in registry.unique_files(kind)} == names, (root, kind)
    # Several roots at once, joined as --models / FARM_MODELS join them; the first one wins a clash.
    extra = tmp_path / "extra" / "Lora"
    extra.mkdir(parents=True)
    shutil.copy(tree / "models" / "Lora" / "style15.safetensors", extra / "more.safetensors")
    both = Registry(f"{tree}{os.pathsep}{tmp_path / 'extra'}")
    assert set(both.files("lora")) == {"style15", "detail15", "stylexl", "more"}
    assert both.resolve("lora", "style15").path.parent == tree / "models" / "Lora"


def test_references_by_stem_subfolder_hash_sha256_and_path(tree, tmp_path):
    registry = Registry(tree)
    path = tree / "models" / "Stable-diffusion" / "tiny15.safetensors"
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    for ref in ("tiny15", "tiny15.safetensors", sha[:10], sha, str(path)):
        assert registry.resolve("checkpoint", ref).path == path, ref
    sub = tmp_path / "models" / "Lora" / "styles"
    sub.mkdir(parents=True)
    shutil.copy(tree / "models" / "Lora" / "style15.safetensors", sub / "ink.safetensors")
    assert Registry(tmp_path).resolve("lora", "styles/ink").path == sub / "ink.safetensors"
    # A LoRA is found by its A1111 (addnet) hash too.
    assert Registry(tmp_path).resolve("lora", lora_hash(sub / "ink.safetensors")[:12]).name == "styles/ink"
    with pytest.raises(ModelFileError, match=r"unknown lora 'style51' \(did you mean 'style15'\?\); looked in"):
        registry.resolve("lora", "style51")


def test_hashes_follow_a1111_and_are_cached(tree, tmp_path, monkeypatch):
    lora = tmp_path / "l.safetensors"
    shutil.copy(tree / "models" / "Lora" / "style15.safetensors", lora)
    data = lora.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert lora_hash(lora) == hashlib.sha256(data[8 + n:]).hexdigest()  # addnet: the tensor data only
    assert hashes.sha256_file(lora) == hashlib.sha256(data).hexdigest()

    # Cached by (path, size, mtime): a second call reads nothing; a changed file is hashed again.
    def no_reading(*_):
        raise AssertionError("hashed again")

    monkeypatch.setattr(hashes, "_sha256_from", no_reading)
    assert lora_hash(lora) == hashlib.sha256(data[8 + n:]).hexdigest()
    monkeypatch.undo()
    os.utime(lora, ns=(1, 1))
    assert lora_hash(lora) == hashlib.sha256(data[8 + n:]).hexdigest()

    # kohya's trainer stores its own hash in the metadata; A1111 prefers it.
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(lora)), str(lora), metadata={"sshs_model_hash": "ab" * 32})
    assert lora_hash(lora) == "ab" * 32


def test_families_come_from_the_header(tree):
    models = tree / "models"
    assert file_family(models / "Stable-diffusion" / "tiny15.safetensors", "checkpoint") == "SD1.5"
    assert file_family(models / "Stable-diffusion" / "tinyxl.safetensors", "checkpoint") == "SDXL"
    assert file_family(models / "Lora" / "style15.safetensors", "lora") == "SD1.5"
    assert file_family(models / "Lora" / "stylexl.safetensors", "lora") == "SDXL"
    assert file_family(tree / "embeddings" / "embxl.safetensors", "embedding") == "SDXL"
    assert file_family(models / "Lora" / "style15.safetensors", "checkpoint") == "not a checkpoint"


def test_the_family_table_names_checkpoints_sizes_and_budgets(tree):
    from farm.families import checkpoint_family, default_size, header_family

    files = {"tinyxl": tree / "models/Stable-diffusion/tinyxl.safetensors",
             "tiny15": tree / "models/Stable-diffusion/tiny15.safetensors"}
    assert checkpoint_family("tinyxl", files, {}) == "SDXL"
    assert checkpoint_family("tiny15", files, {}) == "SD1.5"
    assert checkpoint_family("gone", files, {"family:gone": "SDXL"}) == "SDXL"  # a job record's
    assert checkpoint_family("gone", files, {}) == "?"
    assert default_size(["SDXL"]) == "1024x1024"
    assert default_size(["SDXL", "SD1.5"]) == default_size(["?"]) == default_size(["SD2"]) == "512x512"
    assert header_family(["model.diffusion_model.x", "conditioner.embedders.0.model.y"]) == "SDXL refiner"
    assert header_family(["model.diffusion_model.x", "cond_stage_model.model.y"]) == "SD2"
    assert header_family(["lora_unet_x.alpha"]) == "not a checkpoint"


def test_the_worker_asks_a_pipeline_its_family():
    from worker.families import UnknownFamily, named, of_pipeline
    from worker.tiny import tiny_pipeline

    sd15, sdxl = of_pipeline(tiny_pipeline()), of_pipeline(tiny_pipeline("SDXL"))
    assert (sd15.name, sdxl.name) == ("SD1.5", "SDXL") and named("SDXL") is sdxl
    assert len(sd15.text_encoders(tiny_pipeline())) == 1 and len(sdxl.text_encoders(tiny_pipeline("SDXL"))) == 2
    assert sdxl.latent_shape(tiny_pipeline("SDXL"), 64, 32) == (4, 16, 32)  # tiny VAE: factor 2

    class QwenImagePipeline:  # no family module: not taken for another family
        text_encoder_2 = object()

    with pytest.raises(UnknownFamily, match="no model family renders a QwenImagePipeline"):
        of_pipeline(QwenImagePipeline())


def test_models_list_shows_kind_family_size_and_hash(tree):
    result = farm("models", "list", "--models", str(tree))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[-1]: line.split() for line in result.stdout.splitlines()}
    sha = hashes.sha256_file(tree / "models" / "Stable-diffusion" / "tinyxl.safetensors")
    assert rows["tinyxl"][:2] == ["checkpoint", "SDXL"] and sha[:10] in rows["tinyxl"]
    assert rows["tiny15"][:2] == ["checkpoint", "SD1.5"]
    assert rows["stylexl"][:2] == ["lora", "SDXL"]
    assert lora_hash(tree / "models" / "Lora" / "stylexl.safetensors")[:12] in rows["stylexl"]
    assert rows["tinyvae"][0] == "vae" and rows["old15"][0] == "embedding"
    assert "MB" in rows["tiny15"]
    result = farm("models", "list", "--models", str(tree), "--kind", "lora")
    assert {line.split()[0] for line in result.stdout.splitlines()} == {"lora"}


def test_spec_default_size_follows_the_checkpoint_family(tree):
    def size(checkpoint: str, models) -> list:
        spec = parse_spec(f"prompt: a cat\ncheckpoint: {checkpoint}\nseed: 1\n", "job.yaml", models)
        return list(spec.values["size"])

    assert size("tinyxl", tree) == ["1024x1024"]
    assert size("tiny15", tree) == ["512x512"]
    assert size("tinyxl", None) == ["512x512"]  # no models folder: the family is unknown
    # A job record pins the family, so `farm resume` without the models re-expands the same tasks.
    text = "prompt: a cat\ncheckpoint: tinyxl\nseed: 1\n"
    submitted = parse_spec(text, "job.yaml", tree)
    resumed = parse_spec(text, "job.yaml", None, submitted.checkpoint_hashes())
    assert list(resumed.values["size"]) == ["1024x1024"] and resumed.job_id == submitted.job_id
    assert [t.id for t in expand(resumed)] == [t.id for t in expand(submitted)]


# --- SDXL ------------------------------------------------------------------------------------

def test_shipped_sdxl_config_has_sdxl_base_sizes():
    """configs/sdxl describes stabilityai/stable-diffusion-xl-base-1.0 (counted on the meta device)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from worker.pipelines import configs_dir

    d = configs_dir() / "sdxl"
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(d, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(d, subfolder="vae"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(d, subfolder="text_encoder"))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(d, subfolder="text_encoder_2"))

    def millions(m):
        return round(sum(p.numel() for p in m.parameters()) / 1e6)

    assert (millions(unet), millions(vae), millions(te), millions(te2)) == (2567, 84, 123, 695)
    assert vae.config.scaling_factor == 0.13025
    tokenizer_2 = CLIPTokenizer.from_pretrained(d, subfolder="tokenizer_2")
    assert len(tokenizer_2) == 49408 and tokenizer_2.pad_token == "!" and tokenizer_2.pad_token_id == 0


def test_tiny_sdxl_checkpoint_round_trips_and_renders(tree, tmp_path):
    from worker.tiny import tiny_pipeline

    path = tree / "models" / "Stable-diffusion" / "tinyxl.safetensors"
    pipe = load_pipeline(path)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    reference = tiny_pipeline("SDXL")
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        loaded, original = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert loaded.keys() == original.keys()
        assert all(torch.equal(loaded[k], original[k]) for k in original), name
    assert pipe.tokenizer_2.pad_token == "!"

    store = open_store(str(tmp_path / "out"))
    ctx = WorkerContext(models_dir=tree)
    task = _task("tinyxl")
    assert run_task(task, store, ctx)["images"] == 1
    assert _pixels(tmp_path / "out", task).shape == (64, 64, 3)


# --- safe loading ------------------------------------------------------------------------------

class _RunsCode:
    """Unpickling this calls os.system: what a malicious .ckpt does."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_pickle_that_runs_code_is_refused_and_never_executed(tree, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "models" / "Stable-diffusion" / "evil.ckpt"
    evil.parent.mkdir(parents=True)
    evil.write_bytes(pickle.dumps({"state_dict": {"x": _RunsCode(f"touch {marker}")}}))
    with pytest.raises(ModelLoadError, match=r"evil\.ckpt: a pickled checkpoint; only \.safetensors") as info:
        load_pipeline(evil)  # pickles not allowed: not even opened
    with pytest.raises(ModelLoadError, match=r"evil\.ckpt: refused: the file wants to run code") as info:
        load_pipeline(evil, allow_pickle=True)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    # Through a task, the worker fails the task and carries on.
    ctx = WorkerContext(models_dir=tmp_path / "models", allow_pickle=True)
    with pytest.raises(TaskError, match="refused"):
        run_task(_task("evil"), open_store(str(tmp_path / "out")), ctx)
    assert not marker.exists()


def test_a_weights_only_ckpt_loads_when_pickles_are_allowed(tree, tmp_path):
    from safetensors.torch import load_file

    source = tree / "models" / "Stable-diffusion" / "tiny15.safetensors"
    ckpt = tmp_path / "old.ckpt"
    torch.save({"state_dict": load_file(str(source)), "global_step": 1}, ckpt)
    shutil.copytree(source.with_name("tiny15.config"), tmp_path / "old.config")
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        load_pipeline(ckpt)
    pipe = load_pipeline(ckpt, allow_pickle=True)
    reference = load_pipeline(source)
    assert all(torch.equal(a, b) for a, b in zip(pipe.unet.state_dict().values(), reference.unet.state_dict().values()))


def test_corrupt_and_wrong_files_fail_the_task_with_one_line(tree, tmp_path):
    models = tmp_path / "models"
    folder = models / "Stable-diffusion"
    folder.mkdir(parents=True)
    source = tree / "models" / "Stable-diffusion" / "tiny15.safetensors"
    data = source.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = [s * 2 for s in header[key]["shape"]]  # claims more data than it has
    lying = json.dumps(header).encode()
    cases = {
        "truncated": (data[: len(data) // 2], "truncated"),
        "lying": (struct.pack("<Q", len(lying)) + lying + data[8 + n:], "size does not match its shape"),
        "garbage": (b"\xff" * 4000, "not a safetensors file"),
        "alora": ((tree / "models" / "Lora" / "style15.safetensors").read_bytes(), "is it a LoRA"),
    }
    for name, (content, reason) in cases.items():
        (folder / f"{name}.safetensors").write_bytes(content)
    shutil.copy(source, folder / "good.safetensors")
    shutil.copytree(source.with_name("tiny15.config"), folder / "good.config")
    ctx = WorkerContext(models_dir=models)
    store = open_store(str(tmp_path / "out"))
    for name, (_, reason) in cases.items():
        with pytest.raises(TaskError, match=f"{name}.safetensors") as info:
            run_task(_task(name), store, ctx)
        assert reason in str(info.value) and "\n" not in str(info.value)
    assert run_task(_task("good"), store, ctx)["images"] == 1  # the worker is still fine
