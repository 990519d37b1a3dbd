"""Inpaint and outpaint end to end: `farm run` of jobs/inpaint.yaml and jobs/outpaint.yaml after
`farm models make-tiny`, and over Redis: `farm submit` + a real `farm worker` that has neither the
init images nor the masks (it reads both from the store by content hash), on the ordinary and the
inpainting tiny checkpoint; the pixels outside the masks are the init images'."""

from __future__ import annotations

import hashlib
import io
import json
import shutil

import numpy as np
from PIL import Image

from conftest import REPO, farm
from farm.infotext import parse_infotext, read_parameters
from farm.ledger import Ledger
from test_e2e_farm import wait_complete
from worker.tiny import make_tiny, make_tiny_inpaint, make_tiny_inputs, make_tiny_masks

SPEC = """\
name: inpaint-redis
prompt: a red robot
checkpoint: [seedfarm-tiny, seedfarm-tiny-inpaint]
size: 64x64
steps: 2
sampler: Euler a
seed: 5
init_images: [inputs/gradient.png, inputs/cutout.png]
mask: masks
mask_blur: 2
"""


def test_redis_worker_reads_init_images_and_masks_from_the_store(redis_server, start_worker, tmp_path):
    tiny_models = tmp_path / "models"  # the workers' models folder: both tiny checkpoints
    make_tiny(tiny_models, "seedfarm-tiny")
    make_tiny_inpaint(tiny_models)
    client = tmp_path / "client"  # the submitting PC: the only place the image files are
    make_tiny_inputs(client)
    make_tiny_masks(client)
    spec = client / "inpaint.yaml"
    spec.write_text(SPEC)
    store_dir = tmp_path / "store"
    submitted = farm("submit", str(spec), "--broker", redis_server.url, "--store", str(store_dir),
                     "--models", str(tiny_models))
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    names = {f"{hashlib.sha256((client / sub / n).read_bytes()).hexdigest()}.png"
             for sub in ("inputs", "masks") for n in ("gradient.png", "cutout.png")}
    assert names <= {p.name for p in (store_dir / job / "inputs").iterdir()}  # masks uploaded too
    originals = {n: np.asarray(Image.open(client / "inputs" / n).convert("RGB"), dtype=np.int16)
                 for n in ("gradient.png", "cutout.png")}
    shutil.rmtree(client / "inputs")
    shutil.rmtree(client / "masks")
    start_worker(redis_server.url, tiny_models, "alpha")
    wait_complete(Ledger(redis_server.client()), job)
    records = [json.loads(p.read_text()) for p in sorted((store_dir / job / "records").glob("*.json"))]
    assert len(records) == 4 and {r["task"]["kind"] for r in records} == {"inpaint"}
    assert {r["task"]["checkpoint"] for r in records} == {"seedfarm-tiny", "seedfarm-tiny-inpaint"}
    for record in records:
        assert "Mask blur: 2" in record["parameters"]
        if record["task"]["axes"]["init_images"] == "inputs/gradient.png":  # its mask: the square 16..47
            image = np.asarray(Image.open(io.BytesIO((store_dir / job / record["image"]).read_bytes())),
                               dtype=np.int16)
            assert abs(image[:8] - originals["gradient.png"][:8]).max() <= 1
            assert abs(image[24:40, 24:40] - originals["gradient.png"][24:40, 24:40]).mean() > 5


def test_farm_run_of_jobs_inpaint_and_outpaint_after_make_tiny(tmp_path):
    models = tmp_path / "models"
    made = farm("models", "make-tiny", str(models))
    assert made.returncode == 0, made.stderr
    for name, count, sizes in (("inpaint", 8, {(64, 64)}), ("outpaint", 4, {(128, 64), (128, 128)})):
        result = farm("run", str(REPO / "jobs" / f"{name}.yaml"), "--models", str(models), "--out", str(tmp_path / "out"))
        assert result.returncode == 0, result.stderr
        images = sorted((tmp_path / "out").glob(f"{name}-*/images/*.png"))
        assert len(images) == count
        assert {Image.open(p).size for p in images} == sizes
        params = [parse_infotext(read_parameters(p))[2] for p in images]
        assert all(p["Denoising strength"] in (0.75, 0.8) and "Mask blur" in p for p in params)
        assert list((tmp_path / "out").glob(f"{name}-*/sheets/*.png"))
    inpainted = [parse_infotext(read_parameters(p))[2] for p in (tmp_path / "out").glob("inpaint-*/images/*.png")]
    assert {p["Model"] for p in inpainted} == {"seedfarm-tiny", "seedfarm-tiny-inpaint"}
    assert sum(p.get("Inpaint area") == "Only masked" for p in inpainted) == 4
