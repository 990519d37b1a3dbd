"""VRAM need and routing by it (farm/vram.py): the table, the files on disk, steering, the submit
warning, and `farm workers` showing each worker's mode and dtype. No torch, no GPU: model files
here are safetensors headers over sparse files, as large as the real ones but taking no disk."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from farm.families import FLUX_KEY, pixel_budget
from farm.messages import Route
from farm.vram import (GB, GIB, Footprint, Memory, Weights, fits, footprint, need_gb, typical_footprint,
                       unholdable, worker_memory)
from worker.queue_order import Capabilities

MP = 1024 * 1024
FLUX = "Flux.1 [dev]"


def flux(precision: str, t5: str = "t5xxl") -> Footprint:
    return typical_footprint(FLUX, precision, t5)


def test_flux_dev_bf16_needs_offload_on_an_8_gb_card():
    fp = flux("bf16")
    assert not fits(fp, MP, 8, "high") and not fits(fp, MP, 24, "high")  # 34 GB held whole
    assert not fits(fp, MP, 8, "med")  # the 23.8 GB denoiser alone
    # low: the denoiser a block at a time, but T5 is loaded whole (block-level offload splits only
    # a model's top-level block lists): T5 in fp16 (9.8 GB) does not fit an 8 GB card, in fp8 it does
    assert not fits(fp, MP, 8, "low")
    assert fits(flux("bf16", "t5xxl_fp8"), MP, 8, "low")
    assert fits(fp, MP, 12, "low")


def test_quantized_flux_fits_12_gb():
    q4 = flux("Q4_K")
    assert fits(q4, MP, 12, "med")  # one model at a time: T5 fp16 is the largest
    assert not fits(q4, MP, 12, "high")  # all together: 6.8 + 9.8 GB + activations
    assert fits(flux("Q4_K", "t5xxl_fp8"), MP, 16, "high")
    assert need_gb(flux("Q8_0"), MP, "med") < need_gb(flux("bf16"), MP, "med")
    # an fp8 file is held at its size, half the bf16 one
    assert flux("fp8_e4m3fn").denoiser.held_gb("bf16") == pytest.approx(11.9 * GB / GIB)


def test_held_size_follows_the_compute_dtype():
    assert Weights(4 * GIB, "fp32").held_gb("fp16") == 2  # cast down on the card
    assert Weights(2 * GIB, "bf16").held_gb("fp16") == 2
    assert Weights(2 * GIB, "Q8_0").held_gb("fp16") == 2  # quantized: kept as stored
    assert Weights(2 * GIB, "fp16").held_gb("fp32") == 4  # a CPU worker computes in fp32


def test_more_pixels_need_more():
    fp = flux("Q4_K")
    assert need_gb(fp, 4 * MP, "med") - need_gb(fp, MP, "med") == pytest.approx(6.0)


def test_sd_families_keep_the_pixel_budget_rule_in_every_mode():
    for family in ("SD1.5", "SDXL"):
        fp = Footprint(family, Weights(0, "?"))
        for vram in (8, 12, 24):
            budget = pixel_budget(vram, family)
            for mode in ("high", "med", "low"):
                assert fits(fp, budget, vram, mode) and not fits(fp, budget + 1, vram, mode)


# --- from the files on disk ------------------------------------------------------------------

def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> Path:
    """A valid safetensors file of these tensors, its data a hole (a sparse file)."""
    width = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = width[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return path


def flux_denoiser(path: Path, dtype: str, params: int, prefix: str = "") -> Path:
    return write_safetensors(path, {prefix + FLUX_KEY: ("BF16", [128]),
                                    prefix + "guidance_in.in_layer.weight": ("BF16", [3072, 256]),
                                    prefix + "double_blocks.0.img_mlp.0.weight": (dtype, [params])})


def flux_parts(models: Path, scale: float = 1.0) -> None:
    """Flux.1's text encoders (fp16) and VAE (fp32) at their real sizes times `scale`."""
    write_safetensors(models / "text_encoders" / "clip_l.safetensors",
                      {"text_model.encoder.layers.0.self_attn.q_proj.weight": ("F16", [int(123_000_000 * scale)])})
    write_safetensors(models / "text_encoders" / "t5xxl.safetensors",
                      {"encoder.block.0.layer.0.SelfAttention.q.weight": ("F16", [int(4_760_000_000 * scale)])})
    write_safetensors(models / "vae" / "ae.safetensors", {"decoder.conv_in.weight": ("F32", [int(83_800_000 * scale)])})


def test_footprint_reads_sizes_and_precisions_from_the_files(tmp_path):
    flux_parts(tmp_path)
    den = flux_denoiser(tmp_path / "diffusion_models" / "flux1-dev.safetensors", "BF16", 11_900_000_000)
    parts = {"clip_l": tmp_path / "text_encoders" / "clip_l.safetensors",
             "t5xxl": tmp_path / "text_encoders" / "t5xxl.safetensors", "vae": tmp_path / "vae" / "ae.safetensors"}
    fp = footprint(FLUX, den, parts)
    assert fp.precision == "bf16" and fp.denoiser.held_gb("bf16") == pytest.approx(23.8 * GB / GIB, rel=0.01)
    assert [w.precision for w in fp.encoders] == ["fp16", "fp16"] and fp.vae.precision == "fp32"
    assert fp.vae.held_gb("bf16") == pytest.approx(fp.vae.bytes / 2 / GIB)
    # an all-in-one fp8 file: its own text encoders and VAE are weighed apart from the denoiser
    aio = write_safetensors(tmp_path / "checkpoints" / "flux-aio.safetensors", {
        "model.diffusion_model." + FLUX_KEY: ("BF16", [128]),
        "model.diffusion_model.guidance_in.in_layer.weight": ("BF16", [3072, 256]),
        "model.diffusion_model.double_blocks.0.img_mlp.0.weight": ("F8_E4M3", [11_900_000_000]),
        "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight": ("F8_E4M3", [4_890_000_000]),
        "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight": ("F16", [123_000_000]),
        "vae.decoder.conv_in.weight": ("BF16", [83_800_000]),
    })
    fp = footprint(FLUX, aio, {"clip_l": None, "t5xxl": None, "vae": None})
    assert fp.precision == "fp8_e4m3fn" and fp.denoiser.bytes == pytest.approx(11.9 * GB, rel=0.01)
    assert sorted(w.precision for w in fp.encoders) == ["fp16", "fp8_e4m3fn"] and fp.vae.bytes == 83_800_000 * 2
    assert not fits(fp, MP, 8, "high") and fits(fp, MP, 8, "low")


def test_capabilities_refuse_a_route_whose_render_does_not_fit():
    parts = (("clip_l", "clip_l"), ("t5xxl", "t5xxl"), ("vae", "ae"))
    big, small = flux("bf16"), flux("Q4_K")
    caps = Capabilities({"dev": None, "q4": None}, footprints={("dev", parts): big, ("q4", parts): small,
                                                              ("q4", ()): "no t5xxl text encoder 'x' here"},
                        memory=Memory(12.0, "med", "bf16"))
    route = lambda ckpt, p=parts, pixels=MP: Route("normal", ckpt, None, pixels, (), p)  # noqa: E731
    reason = caps.why_not(route("dev"))
    assert "needs ~24.2 GB" in reason and "12.0 GB with --vram med" in reason and "bf16" in reason
    assert caps.why_not(route("q4")) is None
    assert "needs" in caps.why_not(route("q4", pixels=4 * MP))  # the pixels count too
    assert "no t5xxl text encoder" in caps.why_not(route("q4", ()))
    caps.memory = Memory(8.0, "low", "bf16")  # fp16 T5 whole: 9.1 GB
    assert "--vram low" in caps.why_not(route("q4"))
    caps.memory = None  # a CPU worker: no limit
    assert caps.why_not(route("dev")) is None


def test_steering_weighs_its_own_files(tmp_path):
    from worker.steering import Steering

    models = tmp_path / "models"
    flux_parts(models)
    flux_denoiser(models / "diffusion_models" / "flux1-dev.safetensors", "BF16", 11_900_000_000)
    routes = {r.queue: r for r in [
        Route("normal", "flux1-dev", None, MP, (), (("clip_l", "clip_l"), ("t5xxl", "t5xxl"), ("vae", "ae"))),
        Route("normal", "flux1-dev", None, MP, (), (("clip_l", "clip_l"), ("t5xxl", "t5-missing"), ("vae", "ae"))),
    ]}
    ok, missing = routes.values()

    def caps(vram, mode):
        return Steering(None, None, models, vram, None, frozenset(), "home", mode=mode, dtype="bf16").capabilities(routes)

    assert "needs ~" in caps(8.0, "high").why_not(ok)
    assert "needs ~" in caps(24.0, "med").why_not(ok)  # 22.2 GB + 2 GB for the pixels
    assert caps(12.0, "low").why_not(ok) is None
    assert caps(48.0, "high").why_not(ok) is None
    assert "no t5xxl text encoder 't5-missing' here" in caps(48.0, "high").why_not(missing)
    assert caps(None, "high").why_not(ok) is None  # CPU


# --- at submit ----------------------------------------------------------------------------------

def card(name: str, vram: float, mode: str = "high", dtype: str = "fp16", gpu: str = "RTX") -> dict:
    return {"name": name, "gpu": gpu, "vram_gb": str(vram), "profile": mode, "precision": dtype}


def test_submit_warns_once_per_checkpoint_no_live_worker_can_hold():
    r = lambda ckpt, pixels=MP: Route("normal", ckpt, None, pixels)  # noqa: E731
    weights = {"dev": flux("bf16"), "q4": flux("Q4_K"), "xl": Footprint("SDXL", Weights(0, "?")), "odd": None}
    routes = {r("dev"): 5, r("dev", 4 * MP): 2, r("q4"): 3, r("xl"): 1, r("odd"): 1}
    weigh = lambda route: weights[route.checkpoint]  # noqa: E731
    workers = [card("small", 8.0), card("mid", 12.0, "med")]
    lines = unholdable(routes, workers, weigh)
    assert len(lines) == 1  # q4 fits mid, SDXL 1024x1024 fits mid, odd is unknown
    assert lines[0].startswith("7 task(s) of 'dev' (Flux.1 [dev], bf16) need up to ~") and "mid, has 12.0 GB" in lines[0]
    assert unholdable(routes, [], weigh) == []  # no live worker: nothing new to say
    assert unholdable(routes, workers + [card("cpu-box", 0, gpu="cpu")], weigh) == []
    assert len(unholdable(routes, [card("tiny", 6.0)], weigh)) == 3  # SDXL 1 MP too
    assert worker_memory(card("a", 8.0, "low", "bf16")) == Memory(8.0, "low", "bf16")


def test_farm_submit_warns_and_farm_workers_shows_mode_and_dtype(redis_server, tmp_path):
    """End to end through the CLI, with a live worker's heartbeat (no worker process: cheap)."""
    from conftest import farm
    from farm.ledger import Ledger

    models = tmp_path / "models"
    flux_parts(models, 0.001)  # small files: the spec hashes each
    flux_denoiser(models / "diffusion_models" / "flux1-dev.safetensors", "BF16", 10_000_000)
    ledger = Ledger(redis_server.client())
    ledger.heartbeat("tiny-card", {**card("tiny-card", 0.25, "med", "bf16"), "offload": "model", "max_batch": "auto"})
    spec = tmp_path / "job.yaml"
    spec.write_text("name: fluxjob\nprompt: a fox\ncheckpoint: flux1-dev\nsize: 1024x1024\nseed: 1-2\n")
    result = farm("submit", str(spec), "--broker", redis_server.url, "--store", str(tmp_path / "out"),
                  "--models", str(models))
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "2 task(s) of 'flux1-dev' (Flux.1 [dev], bf16)" in warning[0]
    assert "tiny-card, has 0.2 GB with --vram med" in warning[0]
    listed = farm("workers", "--broker", redis_server.url).stdout
    assert "med (model offload)" in listed and "bf16" in listed
    # a worker that can hold it: nothing to say
    ledger.heartbeat("big-card", card("big-card", 48.0, "high", "bf16"))
    result = farm("submit", str(spec), "--broker", redis_server.url, "--store", str(tmp_path / "out2"),
                  "--models", str(models))
    assert result.returncode == 0 and "warning:" not in result.stderr


def test_the_docs_table_shows_the_typical_files():
    from farm.vram import TYPICAL_DENOISER_GB

    text = (Path(__file__).parent.parent / "docs" / "models.md").read_text()
    table = text.split("## VRAM", 1)[1].split("**Sources", 1)[0]
    for family, sizes in TYPICAL_DENOISER_GB.items():
        assert family.split(" [")[0] in table
        for precision, gb in sizes.items():
            assert f"| {precision} | {gb} |" in table, (family, precision)
            fp = typical_footprint(family, precision)
            needs = " | ".join(f"{need_gb(fp, MP, mode, 'bf16'):.1f}" for mode in ("high", "med", "low"))
            assert f"| {needs} |" in table, (family, precision, needs)


def test_auto_mode_offloads_only_the_models_that_need_it():
    """`--vram auto` on a 24 GB card: Flux.1 [dev] Q8_0 stays whole on the card, bf16 (23.8 GB
    denoiser + T5) gets an offloading mode; a mode the user chose is never changed; SD keeps its."""
    from worker.memory import MemoryProfile, profile_for

    auto = MemoryProfile("high", "fp16", "sdpa", False, "cuda:0", 24.0, auto=True)
    assert profile_for(auto, FLUX, flux("Q8_0")).vram == "high"
    assert profile_for(auto, FLUX, flux("bf16")).vram in ("med", "low")
    assert fits(flux("bf16"), MP, 24, profile_for(auto, FLUX, flux("bf16")).vram)
    chosen = MemoryProfile("high", "fp16", "sdpa", False, "cuda:0", 24.0)
    assert profile_for(chosen, FLUX, flux("bf16")).vram == "high"
    assert profile_for(auto, "SDXL", typical_footprint("SDXL")).vram == "high"


# --- a checkpoint only the depot has (farm/depot.py records its weights at push) ------------------

def test_the_depot_records_a_checkpoints_weights_and_a_worker_weighs_it_before_fetching(tmp_path):
    from types import SimpleNamespace

    from farm.depot import Depot, DepotRecord
    from farm.hashes import sha256_file
    from farm.models import ModelFile
    from farm.store import LocalStore, layout
    from worker.model_cache import ModelCache
    from worker.steering import Steering

    there, models = tmp_path / "there", tmp_path / "models"  # the pushing PC; the worker's folder has the parts only
    flux_parts(there, scale=0.002)
    flux_parts(models, scale=0.002)
    den = flux_denoiser(there / "diffusion_models" / "flux1-dev.safetensors", "BF16", 20_000_000)  # 40 MB
    depot = Depot(LocalStore(tmp_path / "depot"))
    record, _ = depot.push(ModelFile("checkpoint", "flux1-dev", den))
    vae, _ = depot.push(ModelFile("vae", "ae", there / "vae" / "ae.safetensors"))
    assert record.family == FLUX and record.held()["denoiser"] == Weights(40_000_000 + 2 * (128 + 3072 * 256), "bf16")
    assert vae.held() == {"file": Weights(vae.size, "fp32")}
    assert DepotRecord.from_json(record.to_json().encode()) == record
    files = {"clip_l": there / "text_encoders" / "clip_l.safetensors",
             "t5xxl": there / "text_encoders" / "t5xxl.safetensors", "vae": there / "vae" / "ae.safetensors"}
    high, med = (need_gb(footprint(FLUX, den, files), 4096, mode, "bf16") for mode in ("high", "med"))

    parts = (("clip_l", "clip_l"), ("t5xxl", "t5xxl"), ("vae", "ae"))
    route = Route("normal", "flux1-dev", sha256_file(den), 4096, (), parts)

    def why_not(vram: float, mode: str) -> str | None:
        ctx = SimpleNamespace(model_cache=ModelCache(tmp_path / "cache", 10**12, depot), holds=[])
        caps = Steering(None, ctx, models, vram, None, frozenset(), "home", mode=mode,
                        dtype="bf16").capabilities({route.queue: route})
        assert "flux1-dev" in caps.fetchable  # it would fetch it...
        return caps.why_not(route)  # ...if its card can hold the render

    # weighed as the files themselves weigh, before a byte is fetched
    assert "needs ~" in why_not(high * 0.99, "high") and why_not(high * 1.01, "high") is None
    assert "needs ~" in why_not(med * 0.99, "med") and why_not(med * 1.01, "med") is None
    (models / "vae" / "ae.safetensors").unlink()  # a part only the depot has: weighed from its record
    assert "needs ~" in why_not(high * 0.99, "high") and why_not(high * 1.01, "high") is None

    # a record pushed before the field existed: not weighed, as before (the fetch is offered)
    old = json.loads(record.to_json())
    del old["weights"]
    depot.store.write_text(layout.model_record_key(record.sha256), json.dumps(old))
    assert DepotRecord.from_json(json.dumps(old).encode()).weights == ()
    assert why_not(high * 0.5, "high") is None
