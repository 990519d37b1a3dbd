"""Task ids and job ids are the contract with every store already written: a job resumed by a newer
seedfarm must find its images under the same names and render nothing new. These ids were computed
by seedfarm before the parameter table existed; a change that moves any of them breaks resume.

The checkpoint and VAE hashes are given as a job record gives them (a fixed file's sha256), so the
ids do not depend on a models folder.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from farm.expand import expand
from farm.spec import parse_spec

HASHES = {
    "base": "1" * 64,
    "other": "2" * 64,
    "xl": "3" * 64,
    "vae:clear": "4" * 64,
    "family:base": "SD1.5",
    "family:other": "SD1.5",
    "family:xl": "SDXL",
}

SPECS = {
    # the defaults: every axis a spec may leave out takes its default
    "plain": """
prompt: a cabin in the woods
checkpoint: base
seed: 7
""",
    # the default size of an SDXL checkpoint, from its recorded family
    "xl": """
prompt: a lighthouse
checkpoint: xl
seed: [1, 2]
""",
    # every sweepable axis the id holds (zipped in two groups, to keep the job small)
    "everything": """
version: 1
name: everything
prompt: a robot|red paint|in the rain
prompt_matrix: true
prompt_sr: [robot, cat]
negative_prompt: [blurry, "ugly, text"]
checkpoint: [base, other]
vae: [None, clear]
lora: [None, details]
lora_weight: [0.5, 1]
sampler: [DPM++ 2M, Euler]
schedule: [Automatic, Karras]
steps: [2, 3]
cfg: 5-7 [2]
clip_skip: [1, 2]
rng: [cpu, nv]
variation_seed: [11, 12]
variation_strength: [0, 0.25]
seed_resize_from: ["0x0", 32x48]
size: [64x64, 64x96]
seed: 1000-1001
batch_size: 2
output: {filename: "[seed]-[model_name]-[cfg]-[task_id]"}
combine: >-
  (checkpoint, vae, lora, lora_weight, sampler, schedule, steps, cfg)
  * (clip_skip, rng, variation_seed, variation_strength, seed_resize_from, size, negative_prompt)
  * prompt * prompt_sr * seed
""",
    # width/height axes, zipped axes and an output folder
    "zipped": """
name: zipped
prompts: [a fox, a ramen bowl, a ship]
seeds: [101, 202, 303]
cfg_scale: [5, 8]
width: [64, 128]
height: 64
checkpoint: base
sampler: DPM++ SDE Karras
combine: "(prompt, seed) * cfg * width"
grid: {x: cfg, y: prompt}
output: {folder: zipped-run}
""",
}



def write_safetensors(path: Path, names: list[str]) -> None:
    """A fixed safetensors file (one float32 zero per tensor), written byte by byte so that its
    sha256 never changes."""
    header = {name: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i, name in enumerate(names)}
    blob = json.dumps(header, sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(4 * len(names)))


@pytest.fixture
def models_folder(tmp_path) -> Path:
    """An A1111 models folder with fixed files: the ids then hold their real sha256."""
    write_safetensors(tmp_path / "Stable-diffusion" / "base.safetensors", ["model.diffusion_model.out.weight"])
    write_safetensors(tmp_path / "Stable-diffusion" / "sub" / "xl.safetensors",
                      ["model.diffusion_model.out.weight", "conditioner.embedders.1.model.ln_final.weight"])
    write_safetensors(tmp_path / "VAE" / "clear.safetensors", ["decoder.conv_out.weight"])
    write_safetensors(tmp_path / "Lora" / "details.safetensors", ["lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"])
    return tmp_path


FROM_FILES = """
prompt: "a castle <lora:details:0.7>"
checkpoint: [base, sub/xl]
vae: [None, clear]
seed: 5
"""

# name -> (job id, task count, sha256 of all task ids in order (first 16 hex), first id, last id)
PINNED = {
    "plain": ("plain-7cf410d8", 1, "0f3db790eaa98c1d", "898963b05c48e4a7", "898963b05c48e4a7"),
    "xl": ("xl-2df9fe44", 2, "07003bf11642d5f5", "e9bc4f630706a575", "1111a7ba93ca6f6a"),
    "everything": ("everything-8d445ea8", 64, "f9e1fc75fbab07ee", "c2951ea424a33e4e", "1db8623a833d08b2"),
    "zipped": ("zipped-run", 12, "8a49821756ac021c", "033500f70f33d09f", "167ca5b17ecaeab4"),
}
PINNED_FROM_FILES = ("files-0b3eee0f", ["4c5aee0ad212509a", "a4fa01a57f65de77", "08f81b5aec69129a", "d2a756da020ce4e4"])


@pytest.mark.parametrize("name", sorted(SPECS))
def test_job_and_task_ids_are_what_they_were(name):
    spec = parse_spec(SPECS[name], f"jobs/{name}.yaml", checkpoint_hashes=HASHES)
    ids = [task.id for task in expand(spec)]
    digest = hashlib.sha256(" ".join(ids).encode()).hexdigest()[:16]
    assert (spec.job_id, len(ids), digest, ids[0], ids[-1]) == PINNED[name]


def test_ids_from_real_model_files_are_what_they_were(models_folder):
    spec = parse_spec(FROM_FILES, "jobs/files.yaml", models_dir=models_folder)
    ids = [task.id for task in expand(spec)]
    assert (spec.job_id, ids) == PINNED_FROM_FILES
