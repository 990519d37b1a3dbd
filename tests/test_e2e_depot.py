"""End to end: `farm submit --push-models` puts a job's checkpoint, LoRA and VAE into the store's
depot, and a real `farm worker` with an empty models folder fetches them into its model cache,
renders, and renders the next job from its cache. Redis and the worker are real processes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import farm
from farm.hashes import sha256_file
from farm.infotext import parse_infotext, read_parameters
from farm.ledger import Ledger
from farm.models import lora_hash
from farm.store import open_store
from model_tree import a1111_tree
from test_e2e_farm import wait_for

SPEC = """\
name: {name}
prompt: "a red robot emb15 <lora:style15:0.8>"
checkpoint: tiny15
vae: tinyvae
seed: {seeds}
steps: 2
sampler: Euler
size: 64x64
"""


def tiny_configs(tree: Path, target: Path) -> Path:
    """The repo's offline configs with the tiny checkpoint's own config as SD1.5's: a tiny model
    fetched without the `.config` folder that sits beside it loads with this (FARM_CONFIGS_DIR)."""
    from worker.pipelines import configs_dir

    shutil.copytree(configs_dir(), target)
    shutil.rmtree(target / "sd15")
    shutil.copytree(tree / "models/Stable-diffusion/tiny15.config", target / "sd15")
    return target


def serve_tiny15_and_style15(tree: Path, root: Path) -> tuple[Path, Path]:
    """tiny15 and style15 of the A1111 tree put on the local HTTP server's folder (`web`), at the
    URLs the specs of these tests give (tiny15 at the top, style15 as a hub file); their paths."""
    ckpt, lora = tree / "models/Stable-diffusion/tiny15.safetensors", tree / "models/Lora/style15.safetensors"
    shutil.copy(ckpt, root / "tiny15.safetensors")
    (root / "org/loras/resolve/main").mkdir(parents=True)
    shutil.copy(lora, root / "org/loras/resolve/main/style15.safetensors")
    return ckpt, lora


def test_worker_with_empty_models_folder_renders_a_job_whose_models_are_only_in_the_depot(
        redis_server, start_worker, tmp_path_factory, tmp_path):
    tree = a1111_tree(tmp_path_factory)
    store = str(tmp_path / "store")
    empty = tmp_path / "empty-models"
    empty.mkdir()
    cache = tmp_path / "cache"
    worker = start_worker(redis_server.url, empty, "fresh",
                          env={"FARM_CONFIGS_DIR": str(tiny_configs(tree, tmp_path / "configs"))},
                          args=("--model-cache", str(cache), "--cache-size", "1G", "--depot", store))
    worker.wait_ready()
    spec = tmp_path / "job.yaml"
    spec.write_text(SPEC.format(name="first", seeds="1-2"))
    result = farm("submit", str(spec), "--broker", redis_server.url, "--store", store, "--models", str(tree),
                  "--push-models")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("pushed: ") == 4  # checkpoint, VAE, LoRA, embedding
    job = result.stdout.strip()
    ledger = Ledger(redis_server.client())
    wait_for(lambda: ledger.job_info(job).get("status") == "complete", 120, "the job")
    out = open_store(store)
    records = [json.loads(line) for line in out.read_text(f"{job}/manifest.jsonl").splitlines()]
    assert len(records) == 2
    _, _, params = parse_infotext(read_parameters(Path(store) / job / records[0]["image"]))
    assert params["Model hash"] == sha256_file(tree / "models/Stable-diffusion/tiny15.safetensors")[:10]
    assert params["VAE hash"] == sha256_file(tree / "models/VAE/tinyvae.safetensors")[:10]
    assert params["Lora hashes"] == f"style15: {lora_hash(tree / 'models/Lora/style15.safetensors')[:12]}"
    assert params["TI hashes"] == f"emb15: {sha256_file(tree / 'embeddings/emb15.safetensors')[:12]}"
    assert not list(empty.iterdir())  # nothing was written into the user's own folder
    assert {p.parent.parent.name for p in cache.rglob("*.safetensors")} == {"Stable-diffusion", "VAE", "Lora",
                                                                            "embeddings"}
    assert worker.text().count("seedfarm.worker: fetched ") == 4
    # it now announces the checkpoint as held (others' routing leaves its tasks to it first)
    wait_for(lambda: any(json.loads(w.get("holds") or "[]") == ["tiny15"] for w in ledger.workers()), 20,
             "the heartbeat announcing tiny15")

    # the next job on this PC starts from its cache: nothing fetched again
    spec.write_text(SPEC.format(name="second", seeds="3"))
    again = farm("submit", str(spec), "--broker", redis_server.url, "--store", store, "--models", str(tree),
                 "--push-models")
    assert again.returncode == 0 and again.stderr.count("in the depot already") == 4
    second = again.stdout.strip()
    wait_for(lambda: ledger.job_info(second).get("status") == "complete", 60, "the second job")
    assert worker.text().count("seedfarm.worker: fetched ") == 4
    assert "Traceback" not in worker.text()



def test_a_task_whose_model_cannot_be_fetched_is_handed_back_until_a_holder_renders_it_or_fails_in_one_line(
        redis_server, start_worker, tmp_path_factory, tmp_path):
    """The depot's copy of tiny15 lives at a URL nobody answers: a worker that lacks tiny15 hands
    its tasks back (no Celery retry), and they fail with one line only once the wait is over with no
    holder; with a holder live, the holder renders them."""
    import os
    import time

    from conftest import free_port
    from farm.depot import Depot
    from farm.ledger import job_key
    from farm.tunables import DEPOT_WAIT_SECONDS

    tree = a1111_tree(tmp_path_factory)
    store = str(tmp_path / "store")
    ckpt = tree / "models/Stable-diffusion/tiny15.safetensors"
    Depot(open_store(store)).link("checkpoint", "tiny15", f"http://127.0.0.1:{free_port()}/tiny15.safetensors",
                                  sha256_file(ckpt), size=ckpt.stat().st_size)
    empty = tmp_path / "empty-models"
    empty.mkdir()
    hooks = str(Path(__file__).parent / "hooks")
    fast = {"DEPOT_RETRY_DELAYS": [0.1], "DEPOT_DOWN_SECONDS": 1.0, "DEPOT_LOOKUP_TTL": 0.5}
    lacking = start_worker(redis_server.url, empty, "lacking", args=("--depot", store, "--model-cache",
                                                                      str(tmp_path / "cache")),
                           env={"PYTHONPATH": os.pathsep.join([hooks, os.environ.get("PYTHONPATH", "")]),
                                "FARM_TEST_TUNABLES": json.dumps(fast)})
    lacking.wait_ready()
    spec = tmp_path / "job.yaml"
    ledger = Ledger(redis_server.client())
    r = redis_server.client()

    def submit(name: str) -> str:
        spec.write_text(f"name: {name}\nprompt: a red robot\ncheckpoint: tiny15\nseed: 1\nsteps: 2\n"
                        "sampler: Euler\nsize: 64x64\n")
        result = farm("submit", str(spec), "--broker", redis_server.url, "--store", store, "--models", str(tree))
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    # No holder: handed back, then (its wait made older than the bound) failed in one line.
    first = submit("nobody")
    waits = wait_for(lambda: list(r.scan_iter(f"{job_key(first, 'depot-wait')}:*")), 60, "a hand-back")
    assert "handed 1 task(s) back to the queue" in lacking.text()
    assert ledger.status(first).failed == {}
    r.set(waits[0], str(time.time() - DEPOT_WAIT_SECONDS - 60), keepttl=True)
    failed = wait_for(lambda: ledger.status(first).failed, 60, "the task to fail")
    reason = next(iter(failed.values()))
    assert reason.startswith("cannot reach http://127.0.0.1:") and "no live worker holds it" in reason
    assert "\n" not in reason

    # A holder comes: the tasks handed back meanwhile are rendered there.
    second = submit("holder")
    wait_for(lambda: list(r.scan_iter(f"{job_key(second, 'depot-wait')}:*")), 60, "a hand-back")
    start_worker(redis_server.url, tree, "holder")
    wait_for(lambda: ledger.job_info(second).get("status") == "complete", 90, "the holder to render the job")
    assert ledger.status(second).failed == {}
    assert set(ledger.status(second).workers) == {"holder"}
    assert "retrying in" not in lacking.text() and "Traceback" not in lacking.text()


def test_a_spec_giving_the_checkpoint_and_lora_by_url_and_sha256_renders_on_a_worker_without_them(
        redis_server, start_worker, tmp_path_factory, tmp_path, web, monkeypatch):
    """No push, no link: the spec gives tiny15 and style15 by URL (a local HTTP server is the
    internet) with their sha256; the coordinator pins them without the files, and a worker with an
    empty models folder fetches, verifies and renders. `farm run` on a PC without them fetches
    them the same way and renders the same images."""
    root, base = web
    tree = a1111_tree(tmp_path_factory)
    ckpt, lora = serve_tiny15_and_style15(tree, root)
    store = str(tmp_path / "store")
    empty = tmp_path / "empty-models"
    empty.mkdir()
    worker = start_worker(redis_server.url, empty, "fresh",
                          env={"FARM_CONFIGS_DIR": str(tiny_configs(tree, tmp_path / "configs")), "HF_ENDPOINT": base},
                          args=("--model-cache", str(tmp_path / "cache"), "--depot", store))
    worker.wait_ready()
    spec = tmp_path / "job.yaml"
    spec.write_text(f"""\
name: by-url
prompt: a red robot
checkpoint: {{url: "{base}/tiny15.safetensors", sha256: {sha256_file(ckpt)}}}
lora: {{url: "hf://org/loras/style15.safetensors", sha256: {sha256_file(lora)}}}
lora_weight: 0.8
seed: 1
steps: 2
sampler: Euler
size: 64x64
""")
    result = farm("submit", str(spec), "--broker", redis_server.url, "--store", store, "--models", str(empty))
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    ledger = Ledger(redis_server.client())
    wait_for(lambda: ledger.job_info(job).get("status") == "complete", 120, "the job")
    assert ledger.status(job).failed == {}
    records = [json.loads(line) for line in open_store(store).read_text(f"{job}/manifest.jsonl").splitlines()]
    _, _, params = parse_infotext(read_parameters(Path(store) / job / records[0]["image"]))
    assert params["Model hash"] == sha256_file(ckpt)[:10] and params["Model"] == "tiny15"
    assert params["Lora hashes"] == f"style15: {lora_hash(lora)[:12]}"
    assert worker.text().count("seedfarm.worker: fetched ") == 2
    assert not list(empty.iterdir()) and "Traceback" not in worker.text()

    monkeypatch.setenv("FARM_CONFIGS_DIR", str(tmp_path / "configs"))
    monkeypatch.setenv("HF_ENDPOINT", base)
    local = farm("run", str(spec), "--out", str(tmp_path / "local"), "--models", str(empty), "--model-cache",
                 str(tmp_path / "local-cache"))
    assert local.returncode == 0, local.stderr
    assert local.stderr.count("fetched ") == 2
    here = [json.loads(line) for line in (tmp_path / "local" / job / "manifest.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["image"]) for r in here] == [(r["task_id"], r["image"]) for r in records]
    for record in records:  # what the worker stored, byte for byte
        image = record["image"]
        assert (tmp_path / "local" / job / image).read_bytes() == (Path(store) / job / image).read_bytes()


def test_a_worker_whose_same_named_lora_has_other_weights_renders_with_the_pinned_one_from_the_depot(
        redis_server, start_worker, tmp_path_factory, tmp_path):
    """The coordinator's style15 is pinned by sha256 in the tasks; a worker whose own style15 has
    other weights fails the task in one line while the depot lacks the pinned file, and once it is
    pushed, fetches it and renders exactly what the pinned file renders."""
    import numpy as np
    from PIL import Image

    from worker.tiny import make_tiny_lora

    tree = a1111_tree(tmp_path_factory)
    pc = tmp_path / "pc"  # the worker's PC: the same checkpoint, another style15
    (pc / "models").mkdir(parents=True)
    (pc / "models/Stable-diffusion").symlink_to(tree / "models/Stable-diffusion")
    own = make_tiny_lora(pc / "models", "style15", seed=7)
    store = str(tmp_path / "store")
    import os

    hooks = str(Path(__file__).parent / "hooks")  # the depot's absence is remembered 0.5 s, not 30
    worker = start_worker(redis_server.url, pc, "other-style",
                          args=("--model-cache", str(tmp_path / "cache"), "--cache-size", "1G", "--depot", store),
                          env={"PYTHONPATH": os.pathsep.join([hooks, os.environ.get("PYTHONPATH", "")]),
                               "FARM_TEST_TUNABLES": json.dumps({"DEPOT_LOOKUP_TTL": 0.5})})
    worker.wait_ready()
    ledger = Ledger(redis_server.client())
    text = 'name: {}\nprompt: "a red robot <lora:style15:0.8>"\ncheckpoint: tiny15\nseed: 1\nsteps: 2\n' \
           "sampler: Euler\nsize: 64x64\n"
    spec = tmp_path / "job.yaml"

    spec.write_text(text.format("unpushed"))
    result = farm("submit", str(spec), "--broker", redis_server.url, "--store", store, "--models", str(tree))
    assert result.returncode == 0, result.stderr
    failed = wait_for(lambda: ledger.status(result.stdout.strip()).failed, 60, "the task to fail")
    (reason,) = failed.values()
    pinned = tree / "models/Lora/style15.safetensors"
    assert reason.startswith(f"LoRA 'style15' at {own} has hash {sha256_file(own)[:10]}, but the job pins "
                             f"{sha256_file(pinned)[:10]}") and "\n" not in reason

    spec.write_text(text.format("pushed"))
    result = farm("submit", str(spec), "--broker", redis_server.url, "--store", store, "--models", str(tree),
                  "--push-models")
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    wait_for(lambda: ledger.job_info(job).get("status") == "complete", 60, "the job")
    assert ledger.status(job).failed == {}, worker.text()[-2000:]
    (record,) = [json.loads(line) for line in open_store(store).read_text(f"{job}/manifest.jsonl").splitlines()]
    image = Path(store) / job / record["image"]
    assert parse_infotext(read_parameters(image))[2]["Lora hashes"] == f"style15: {lora_hash(pinned)[:12]}"
    assert worker.text().count("seedfarm.worker: fetched ") == 1 and "Traceback" not in worker.text()
    ran = farm("run", str(spec), "--out", str(tmp_path / "run"), "--models", str(tree))  # the pinned file here
    assert ran.returncode == 0, ran.stderr
    (want,) = (tmp_path / "run").glob("*/images/*.png")
    assert np.array_equal(np.asarray(Image.open(image)), np.asarray(Image.open(want)))
