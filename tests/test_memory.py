"""Memory profiles: what each --vram/--precision/--attention choice does, checked without a GPU
(the offload calls raise on a CPU-only host, so a recording stand-in takes them)."""

from __future__ import annotations

import pytest
import torch

from worker.memory import ProfileError, apply_profile, choose_profile, set_vae_tiling


def test_auto_picks_by_vram_and_cpu_runs_fp32():
    assert choose_profile(vram_gb=24).vram == "high"
    assert choose_profile(vram_gb=12).vram == "high"
    assert choose_profile(vram_gb=8).vram == "med"
    assert choose_profile(vram_gb=4).vram == "low"
    gpu = choose_profile(vram_gb=8)
    assert (gpu.precision, gpu.dtype, gpu.device, gpu.offload) == ("fp16", torch.float16, "cuda:0", "model")
    assert choose_profile("low", "bf16", vram_gb=24).offload == "block"
    # what `farm workers` shows and `farm submit` weighs tasks against (farm/vram.py)
    assert choose_profile("low", "bf16", vram_gb=24).as_info() == {"profile": "low", "precision": "bf16",
                                                                  "attention": "sdpa", "offload": "group"}
    assert choose_profile("high", vram_gb=4).offload is None  # an explicit choice wins
    cpu = choose_profile("low", "fp16")  # this host has no GPU
    assert (cpu.device, cpu.precision, cpu.offload, cpu.vram_gb) == ("cpu", "fp32", None, 0.0)
    assert "vram med, fp16, sdpa attention, VAE fp32" in choose_profile("med", vae_fp32=True, vram_gb=8).describe()
    with pytest.raises(ProfileError, match="--vram huge: expected one of auto, high, med, low"):
        choose_profile("huge")


class Recorder:
    """Stands in for a pipeline: records the placement calls a profile makes."""

    def __init__(self):
        self.calls = []
        self.vae = torch.nn.Conv2d(1, 1, 1)
        self.vae.enable_slicing = lambda: self.calls.append("vae slicing")
        self.vae.decode = lambda z: z

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, kwargs))


def test_profiles_place_the_pipeline_as_a1111s_flags_do():
    high = apply_profile(Recorder(), choose_profile("high", vram_gb=24))
    assert high.calls == ["vae slicing", ("to", {})]
    med = apply_profile(Recorder(), choose_profile("med", vram_gb=8))
    assert med.calls[-1] == ("enable_model_cpu_offload", {"device": "cuda:0"})
    low = apply_profile(Recorder(), choose_profile("low", vram_gb=4))
    name, kwargs = low.calls[-1]
    assert name == "enable_group_offload" and kwargs["offload_type"] == "block_level"
    fp32_vae = Recorder()
    apply_profile(fp32_vae, choose_profile("high", "fp16", vae_fp32=True, vram_gb=24))
    assert fp32_vae.vae.weight.dtype == torch.float32
    half_vae = Recorder()
    apply_profile(half_vae, choose_profile("high", "fp16", vram_gb=24))
    assert half_vae.vae.weight.dtype == torch.float16


def test_xformers_missing_is_one_clear_line():
    class NoXformers(Recorder):
        def enable_xformers_memory_efficient_attention(self):
            raise ModuleNotFoundError("No module named 'xformers'")

    with pytest.raises(ProfileError, match="--attention xformers: No module named 'xformers' \\(pip install xformers\\)"):
        apply_profile(NoXformers(), choose_profile("high", attention="xformers", vram_gb=24))


def test_vae_tiling_only_for_big_renders_on_offloading_profiles():
    class Vae:
        tiling = None

        def enable_tiling(self):
            self.tiling = True

        def disable_tiling(self):
            self.tiling = False

    class Pipe:
        vae = Vae()

    pipe = Pipe()
    set_vae_tiling(pipe, choose_profile("med", vram_gb=8), 2048, 2048)
    assert pipe.vae.tiling is True
    set_vae_tiling(pipe, choose_profile("med", vram_gb=8), 1024, 1024)
    assert pipe.vae.tiling is False
    set_vae_tiling(pipe, choose_profile("high", vram_gb=24), 2048, 2048)
    assert pipe.vae.tiling is False
