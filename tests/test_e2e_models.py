"""End to end: `farm run` through the real CLI on an A1111 models folder, with a LoRA tag, an
embedding and a VAE, on SD1.5 and SDXL checkpoints."""

from __future__ import annotations

import json

from conftest import farm
from farm.hashes import sha256_file
from farm.infotext import parse_infotext, read_parameters
from farm.models import lora_hash
from model_tree import a1111_tree

SPEC = """\
prompt: "a red robot <lora:style15:0.8>, emb15"
checkpoint: tiny15
vae: [None, tinyvae]
seed: 5
steps: 2
sampler: Euler
size: 64x64
"""


def test_farm_run_with_lora_embedding_and_vae(tmp_path_factory, tmp_path):
    tree = a1111_tree(tmp_path_factory)
    spec = tmp_path / "job.yaml"
    spec.write_text(SPEC)
    result = farm("run", str(spec), "--out", str(tmp_path / "out"), "--models", str(tree))
    assert result.returncode == 0, result.stderr
    (folder,) = (tmp_path / "out").iterdir()
    records = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 2
    vaes = set()
    for record in records:
        prompt, _, params = parse_infotext(read_parameters(folder / record["image"]))
        assert prompt == "a red robot <lora:style15:0.8>, emb15"  # A1111 keeps the tags in the infotext
        assert params["Lora hashes"] == f"style15: {lora_hash(tree / 'models/Lora/style15.safetensors')[:12]}"
        assert params["TI hashes"] == f"emb15: {sha256_file(tree / 'embeddings/emb15.safetensors')[:12]}"
        vaes.add((params.get("VAE"), params.get("VAE hash")))
    assert vaes == {(None, None), ("tinyvae", sha256_file(tree / "models/VAE/tinyvae.safetensors")[:10])}


def test_farm_run_sdxl_with_lora_and_embedding(tmp_path_factory, tmp_path):
    tree = a1111_tree(tmp_path_factory)
    spec = tmp_path / "xl.yaml"
    spec.write_text("prompt: a red robot <lora:stylexl:1>, embxl\ncheckpoint: tinyxl\nseed: 5\nsteps: 2\n"
                    "sampler: Euler\nsize: 64x64\n")
    result = farm("run", str(spec), "--out", str(tmp_path / "out"), "--models", str(tree))
    assert result.returncode == 0, result.stderr
    (folder,) = (tmp_path / "out").iterdir()
    (record,) = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    _, _, params = parse_infotext(read_parameters(folder / record["image"]))
    assert "stylexl" in params["Lora hashes"] and "embxl" in params["TI hashes"]
