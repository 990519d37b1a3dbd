"""Diffusers folders and hub ids as checkpoints: found in the models folders, listed, hashed, loaded
with from_pretrained, rendered through the real CLI like the single file of the same weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import farm
from farm.hashes import folder_hash, sha256_file
from farm.infotext import parse_infotext, read_parameters
from farm.model_files import ModelFileError, folder_files
from farm.models import Registry
from farm.spec import SpecError, parse_spec
from model_tree import a1111_tree
from worker.pipelines import ModelLoadError, load_pipeline


def _save_folder(checkpoint: Path, folder: Path, safetensors: bool = True) -> Path:
    """The tiny single-file checkpoint, loaded and written back as a diffusers folder."""
    pipe = load_pipeline(checkpoint, device="cpu")
    pipe.save_pretrained(folder, safe_serialization=safetensors)
    return folder


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of the shared A1111 tree (left as it is for the other tests) plus diffusers folders:
    tiny15-folder beside the single files, tinyxl-folder in ComfyUI's models/diffusers/, and
    tiny15-bin whose UNet and VAE are pickled .bin files."""
    root = tmp_path_factory.mktemp("a1111-diffusers")
    shutil.copytree(a1111_tree(tmp_path_factory), root, dirs_exist_ok=True)
    sd = root / "models" / "Stable-diffusion"
    _save_folder(sd / "tiny15.safetensors", sd / "tiny15-folder")
    _save_folder(sd / "tinyxl.safetensors", root / "models" / "diffusers" / "tinyxl-folder")
    _save_folder(sd / "tiny15.safetensors", sd / "tiny15-bin", safetensors=False)
    return root


def _images(out: Path) -> dict[tuple, tuple[np.ndarray, dict]]:
    """(Model, VAE) -> (pixels, infotext params) of every image of the one job under out/."""
    from PIL import Image

    (folder,) = out.iterdir()
    found = {}
    for line in (folder / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        _, _, params = parse_infotext(read_parameters(folder / record["image"]))
        pixels = np.asarray(Image.open(folder / record["image"]).convert("RGB"), dtype=np.int16)
        found[(params["Model"], params.get("VAE"))] = (pixels, params)
    return found


# --- the registry -----------------------------------------------------------------------------------

def test_folders_are_checkpoints_named_by_folder_and_their_files_are_not(tree):
    registry = Registry(tree)
    files = registry.files("checkpoint")
    sd = tree / "models" / "Stable-diffusion"
    assert files["tiny15-folder"].path == sd / "tiny15-folder"
    assert files["tinyxl-folder"].path == tree / "models" / "diffusers" / "tinyxl-folder"
    assert not any("diffusion_pytorch_model" in name or name.endswith("model") for name in files)
    assert not any(name.endswith(".config") for name in files)  # tiny15.config/ belongs to tiny15
    assert files["tiny15-folder"].family() == "SD1.5" and files["tinyxl-folder"].family() == "SDXL"
    # a folder given as a path, and by its hash
    by_path = registry.resolve("checkpoint", str(sd / "tiny15-folder"))
    assert by_path.path == sd / "tiny15-folder"
    digest = folder_hash(sd / "tiny15-folder")
    assert registry.resolve("checkpoint", digest[:10]).path == sd / "tiny15-folder"


def test_folder_hash_covers_what_loads_and_not_where_it_lies(tree, tmp_path):
    folder = tree / "models" / "Stable-diffusion" / "tiny15-folder"
    names = [f.relative_to(folder).as_posix() for f in folder_files(folder)]
    assert "model_index.json" in names and "unet/diffusion_pytorch_model.safetensors" in names
    assert "text_encoder/model.safetensors" in names and "scheduler/scheduler_config.json" in names
    digest = sha256_file(folder)  # what the spec and the worker's check call
    assert digest == folder_hash(folder) and len(digest) == 64
    copy = shutil.copytree(folder, tmp_path / "elsewhere" / "renamed")
    (copy / "README.md").write_text("not part of the model")
    (copy / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"an unused variant")
    assert folder_hash(copy) == digest
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert folder_hash(copy) != digest


def test_models_list_shows_folders_with_family_size_and_hash(tree):
    result = farm("models", "list", "--models", str(tree), "--kind", "checkpoint")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[-1]: line.split() for line in result.stdout.splitlines()}
    assert set(rows) == {"tiny15", "tinyxl", "tiny15-folder", "tinyxl-folder", "tiny15-bin"}
    folder = tree / "models" / "Stable-diffusion" / "tiny15-folder"
    assert rows["tiny15-folder"][:2] == ["checkpoint", "SD1.5"] and folder_hash(folder)[:10] in rows["tiny15-folder"]
    assert rows["tinyxl-folder"][:2] == ["checkpoint", "SDXL"]
    assert "MB" in rows["tiny15-folder"]


def test_spec_resolves_folders_and_sizes_by_their_family(tree):
    spec = parse_spec("prompt: a\ncheckpoint: tinyxl-folder\nseed: 1\n", "xl.yaml", tree)
    assert spec.values["size"] == ["1024x1024"]  # SDXL, read from model_index.json
    assert spec.checkpoint_hash("tinyxl-folder") == folder_hash(tree / "models" / "diffusers" / "tinyxl-folder")
    assert spec.checkpoint_hashes()["family:tinyxl-folder"] == "SDXL"


def test_broken_folder_is_listed_as_broken_and_fails_to_load_in_one_line(tree, tmp_path):
    models = tmp_path / "models" / "Stable-diffusion"
    broken = shutil.copytree(tree / "models" / "Stable-diffusion" / "tiny15-folder", models / "broken")
    (broken / "model_index.json").write_text("{not json")
    result = farm("models", "list", "--models", str(tmp_path / "models"))
    assert result.returncode == 0 and "broken" in result.stdout.split() and "Traceback" not in result.stderr
    with pytest.raises(ModelLoadError, match=r"^broken: model_index.json is not valid JSON$"):
        load_pipeline(broken, device="cpu")
    other = shutil.copytree(broken, models / "flux")
    (other / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert Registry(tmp_path / "models").resolve("checkpoint", "flux").family() == "Flux"
    with pytest.raises(ModelLoadError, match=r"^flux: Flux diffusers folders are not supported"):
        load_pipeline(other, device="cpu")
    with pytest.raises(ModelFileError):
        Registry(tmp_path / "models").resolve("checkpoint", "brokn")


# --- rendering ----------------------------------------------------------------------------------------

SPEC = """\
prompt: "a red robot <lora:style15:0.8>, emb15"
checkpoint: [tiny15, tiny15-folder]
vae: [None, tinyvae]
seed: 5
steps: 2
sampler: Euler
size: 64x64
"""


def test_farm_run_renders_a_folder_as_its_single_file(tree, tmp_path):
    """The same weights as a single file and as a diffusers folder, with a LoRA, an embedding and
    a VAE file on top: the same pixels (measured: identical), infotexts naming the folder."""
    spec = tmp_path / "job.yaml"
    spec.write_text(SPEC)
    result = farm("run", str(spec), "--out", str(tmp_path / "out"), "--models", str(tree))
    assert result.returncode == 0, result.stderr
    images = _images(tmp_path / "out")
    assert len(images) == 4
    for vae in (None, "tinyvae"):
        single, single_params = images[("tiny15", vae)]
        folder, params = images[("tiny15-folder", vae)]
        assert np.abs(single - folder).max() == 0, vae
        assert params["Lora hashes"] == single_params["Lora hashes"] and "TI hashes" in params
    digest = folder_hash(tree / "models" / "Stable-diffusion" / "tiny15-folder")
    assert images[("tiny15-folder", None)][1]["Model hash"] == digest[:10]
    assert images[("tiny15-folder", "tinyvae")][1]["VAE hash"] == images[("tiny15", "tinyvae")][1]["VAE hash"]


def test_farm_run_renders_an_sdxl_folder_as_its_single_file(tree, tmp_path):
    spec = tmp_path / "xl.yaml"
    spec.write_text("prompt: a red robot <lora:stylexl:1>, embxl\ncheckpoint: [tinyxl, tinyxl-folder]\n"
                    "seed: 5\nsteps: 2\nsampler: Euler\nsize: 64x64\n")
    result = farm("run", str(spec), "--out", str(tmp_path / "out"), "--models", str(tree))
    assert result.returncode == 0, result.stderr
    images = _images(tmp_path / "out")
    single, folder = images[("tinyxl", None)], images[("tinyxl-folder", None)]
    # Measured: the weights load bit-identical, but the pooled text embedding differs by 2.4e-7
    # between from_single_file and from_pretrained (float noise), so a pixel may differ by 1/255.
    assert np.abs(single[0] - folder[0]).max() <= 1
    assert "stylexl" in folder[1]["Lora hashes"] and "embxl" in folder[1]["TI hashes"]


def test_a_folder_of_pickled_weights_is_refused_unless_pickles_are_allowed(tree, tmp_path):
    spec = tmp_path / "bin.yaml"
    spec.write_text("prompt: a red robot\ncheckpoint: tiny15-bin\nseed: 5\nsteps: 2\nsize: 64x64\n")
    result = farm("run", str(spec), "--out", str(tmp_path / "out"), "--models", str(tree))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "tiny15-bin: a diffusers folder with pickled weights (unet/diffusion_pytorch_model.bin)" in result.stderr
    assert not list((tmp_path / "out").rglob("*.png"))
    # allowed: read weights-only by diffusers, and the same model as the safetensors folder
    pipe = load_pipeline(tree / "models" / "Stable-diffusion" / "tiny15-bin", device="cpu", allow_pickle=True)
    safe = load_pipeline(tree / "models" / "Stable-diffusion" / "tiny15-folder", device="cpu")
    for a, b in zip(pipe.unet.state_dict().values(), safe.unet.state_dict().values()):
        assert (a == b).all()
    assert pipe.seedfarm_config_dir == tree / "models" / "Stable-diffusion" / "tiny15-bin"


# --- hub ids ---------------------------------------------------------------------------------------------

HUB = "stabilityai/stable-diffusion-xl-base-1.0"


def test_a_hub_id_validates_and_fails_offline_with_one_clear_line(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache: the model is nowhere
    spec = tmp_path / "hub.yaml"
    spec.write_text(f"prompt: a red robot\ncheckpoint: [tiny15, {HUB}]\nseed: 5\nsteps: 2\nsize: 64x64\n")
    assert farm("validate", str(spec), "--models", str(tree)).returncode == 0
    tasks = [json.loads(line) for line in farm("expand", str(spec), "--json", "--models", str(tree)).stdout.splitlines()]
    assert [(t["checkpoint"], bool(t["checkpoint_hash"])) for t in tasks] == [("tiny15", True), (HUB, False)]
    result = farm("run", str(spec), "--out", str(tmp_path / "out"), "--models", str(tree))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (failed,) = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert f"checkpoint '{HUB}' is not in the models folders (looked in " in failed
    assert "the Hugging Face hub is offline here (HF_HUB_OFFLINE=1)" in failed
    assert f"download it into a models folder, e.g. `hf download {HUB} --include " in failed
    assert f"--local-dir {tree / 'models' / 'Stable-diffusion' / HUB}`" in failed
    assert len(list((tmp_path / "out").glob("*/images/*.png"))) == 1  # tiny15's image still renders


def test_a_sub_folder_typo_stays_an_unknown_name(tree, tmp_path):
    sub = tree / "models" / "Stable-diffusion" / "sub"
    sub.mkdir(exist_ok=True)
    shutil.copy(tree / "models" / "Stable-diffusion" / "tiny15.safetensors", sub / "mine.safetensors")
    registry = Registry(tree)
    assert registry.is_hub_id(HUB) and not registry.is_hub_id("sub/mien") and not registry.is_hub_id("a/b.safetensors")
    with pytest.raises(SpecError, match=r"unknown checkpoint 'sub/mien' \(did you mean 'sub/mine'\?\)"):
        parse_spec("prompt: a\ncheckpoint: sub/mien\nseed: 1\n", "x.yaml", tree)
    shutil.rmtree(sub)


def test_a_hub_id_downloaded_as_the_error_says_is_found_locally(tree):
    sd = tree / "models" / "Stable-diffusion"
    local = shutil.copytree(sd / "tiny15-folder", sd / "someorg" / "tiny-hub")
    spec = parse_spec("prompt: a\ncheckpoint: someorg/tiny-hub\nseed: 1\n", "x.yaml", tree)
    assert spec.checkpoint_files["someorg/tiny-hub"] == local
    assert spec.checkpoint_hash("someorg/tiny-hub") == folder_hash(sd / "tiny15-folder")
    shutil.rmtree(sd / "someorg")
