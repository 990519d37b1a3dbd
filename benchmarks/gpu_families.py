"""GPU: the families built from parts at their real width, from files as users keep them, in each
precision a gaming PC runs them in: random weights in the architecture of the shipped config
(configs/flux1-dev, configs/zimage-turbo ...: the same compute as the real model), written as the
denoiser alone in the original key layout (bf16 safetensors, fp8 e4m3fn safetensors, GGUF Q8_0 and
Q4_0), with real-size text encoders and VAE files beside it; each loaded through the worker's own
loader (worker/pipelines.py) and rendered at 1024x1024 (20 steps; 8 for Z-Image Turbo), timed two
ways on the same loaded pipeline: the plain diffusers call (`pipe(prompt=...)`, diffusers' own
prompt encoding) and the worker path (worker/render.py `render_batch`, the code `farm worker`
runs). Also the peak VRAM of each.

GGUF Q4_K cannot be written here (the gguf package quantizes Q4_0 and Q8_0 only); Q4_0 stands for
the 4-bit files. `--depth F` keeps a fraction F of the transformer's blocks (same width, so the
time per block is the real one): the times are then also given scaled to the full depth, which
is what a short device session can afford for Flux.1's 12B weights. `--tiny` runs the same code
on the tiny models of `farm models make-tiny` (a check that the script works, on a CPU).

    python benchmarks/gpu_families.py --family "Flux.1 [dev]" --precisions bf16,fp8,Q8_0,Q4_0
    python benchmarks/gpu_families.py --family "Z-Image Turbo" --depth 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import emit, timed  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk, oil painting, dramatic light"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# family -> (its config folder, steps, the transformer's block-count config keys, GGUF architecture)
FAMILIES = {
    "Flux.1 [dev]": ("flux1-dev", 20, ("num_layers", "num_single_layers"), "flux"),
    "Flux.1 [schnell]": ("flux1-schnell", 4, ("num_layers", "num_single_layers"), "flux"),
    "Z-Image Turbo": ("zimage-turbo", 8, ("n_layers",), "lumina2"),
    "SD3.5 Large": ("sd35-large", 28, ("num_layers",), "sd3"),
}


def to_original(family: str, transformer) -> dict:
    """The denoiser's weights in the users' (BFL / Tongyi / Stability) key layout."""
    state = transformer.state_dict()
    if family.startswith("Flux.1"):
        from worker.families.flux1 import to_original as convert

        return convert(state, transformer.config)
    if family.startswith("SD3.5"):
        from worker.families.sd35 import transformer_to_original

        return transformer_to_original(state, dict(transformer.config))
    from worker.families.zimage import transformer_to_original

    return transformer_to_original(state)


def write_parts(family: str, config_dir: Path, models: Path, dtype) -> None:
    """Random real-size text encoders and VAE files, in ComfyUI's names and layouts, built from
    the shipped configs (the worker then loads them with those same configs)."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import AutoConfig, CLIPTextModel, CLIPTextModelWithProjection, Qwen3Model, T5EncoderModel

    from worker.ldm_layout import vae_to_ldm
    from worker.tiny_parts import save_safetensors

    encoders = models / "text_encoders"
    index = json.loads((config_dir / "model_index.json").read_text())
    for sub in sorted(k for k in index if k.startswith("text_encoder")):
        config = AutoConfig.from_pretrained(str(config_dir / sub))
        cls = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection,
               "T5EncoderModel": T5EncoderModel, "Qwen3Model": Qwen3Model}[index[sub][1]]
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = cls(config).to(dtype)
        state = model.state_dict()
        if cls is CLIPTextModel:  # ComfyUI's clip_l: `text_model.*`
            state = {"text_model." + k: v for k, v in state.items()}
        if cls is Qwen3Model:
            state = {"model." + k: v for k, v in state.items()}
        name = {"CLIPTextModel": "clip_l", "T5EncoderModel": "t5xxl_fp16", "Qwen3Model": "qwen_3_4b"}.get(
            index[sub][1], "clip_l" if config.hidden_size == 768 else "clip_g")
        save_safetensors({k: v for k, v in state.items() if "position_ids" not in k}, encoders / f"{name}.safetensors",
                         torch.float16 if name == "t5xxl_fp16" else None)
        del model, state
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(config_dir / "vae")))
    name = "sd35_vae" if family.startswith("SD3") else "ae"
    save_safetensors(vae_to_ldm(vae.state_dict(), vae.config, prefix=""), models / "vae" / f"{name}.safetensors")


def write_denoiser(family: str, config_dir: Path, models: Path, precisions: list[str], depth: float, dtype) -> dict:
    """The denoiser in each precision, with its own config folder (the depth may differ)."""
    import torch

    from worker.tiny_parts import save_safetensors, write_gguf

    folder, _, depth_keys, arch = FAMILIES[family]
    own = models / "own.config"
    shutil.copytree(config_dir, own)
    config_path = own / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    for key in depth_keys:
        config[key] = max(1, round(config[key] * depth))
    config_path.write_text(json.dumps(config))
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, ZImageTransformer2DModel

    cls = {"flux": FluxTransformer2DModel, "sd3": SD3Transformer2DModel, "lumina2": ZImageTransformer2DModel}[arch]
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        transformer = cls.from_config(config).to(dtype)
    state = {k: v.cpu() for k, v in to_original(family, transformer).items()}
    del transformer
    files = {}
    diffusion = models / "diffusion_models"
    for precision in precisions:
        stem = f"bench-{precision}"
        if precision in ("bf16", "fp16"):
            path = save_safetensors(state, diffusion / f"{stem}.safetensors")
        elif precision == "fp8":
            path = save_safetensors({k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in state.items()},
                                    diffusion / f"{stem}.safetensors")
        elif precision in ("Q8_0", "Q4_0"):
            path = write_gguf(state, diffusion / f"{stem}.gguf", arch, precision)
        else:
            raise SystemExit(f"unknown precision {precision}")
        shutil.copytree(own, path.with_name(path.stem + ".config"))
        files[precision] = path
    return files, config


def main() -> None:
    import torch

    from farm.families import family as facts_of
    from farm.model_files import read_tensor_shapes, weights_precision
    from farm.task import RenderTask
    from worker.families import ModelFiles, of_pipeline
    from worker.pipelines import load_pipeline, parts_compute_dtype
    from worker.render import Slot, render_batch

    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="Flux.1 [dev]", choices=sorted(FAMILIES))
    parser.add_argument("--precisions", default="bf16,fp8,Q8_0,Q4_0")
    parser.add_argument("--depth", type=float, default=1.0, help="fraction of the transformer's blocks kept")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=None, help="default: the family's (20; turbo/schnell fewer)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = parts_compute_dtype(torch.float16) if cuda else torch.float32
    folder, steps, _, _ = FAMILIES[args.family]
    steps = args.steps or steps
    work = Path(tempfile.mkdtemp(prefix="gpu-families-"))
    models = work / "models"
    precisions = args.precisions.split(",")
    if args.tiny:
        from worker.tiny import write_tiny_family

        denoiser = write_tiny_family(models, args.family)
        files = {weights_precision(read_tensor_shapes(p)): p for p in denoiser.parent.glob(denoiser.stem + "*")
                 if p.suffix in (".safetensors", ".gguf")}
        args.size, steps, args.repeat, depth = 64, 2, 1, 1.0
    else:
        write_parts(args.family, CONFIGS / folder, models, torch.bfloat16)
        files, _ = write_denoiser(args.family, CONFIGS / folder, models, precisions, args.depth, torch.bfloat16)
        depth = args.depth
    facts = facts_of(args.family)
    from farm.models import Registry
    from farm.parts import resolve_parts

    rows = []
    for precision, path in files.items():
        parts = resolve_parts(facts, path, Registry(models))
        model_files = ModelFiles(path, tuple((p.role, p.path) for p in parts))
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        pipe = load_pipeline(model_files, device=device, dtype=dtype)
        load_seconds = time.perf_counter() - start
        family = of_pipeline(pipe)
        task = RenderTask(job="bench", index=0, prompt=PROMPT, seed=1, checkpoint=path.stem, sampler="Euler",
                          schedule="Simple", steps=steps, cfg=1.0, width=args.size, height=args.size,
                          distilled_cfg=facts.default("distilled_cfg")).with_id()
        guidance = {"guidance_scale": task.distilled_cfg} if task.distilled_cfg else {}

        def plain():
            pipe(prompt=PROMPT, num_inference_steps=steps, width=args.size, height=args.size,
                 generator=torch.Generator("cpu").manual_seed(1), output_type="np", **guidance)

        for how, fn in (("plain", plain), ("worker", lambda: render_batch(pipe, [Slot(task)]))):
            seconds = timed(fn, args.repeat)
            rows.append({"precision": precision, "path": how, "seconds_per_image": round(seconds, 3),
                         "it_per_s": round(steps / seconds, 3),
                         "full_depth_seconds_per_image_estimate": round(seconds / depth, 2) if depth < 1 else None,
                         "load_seconds": round(load_seconds, 1),
                         "peak_vram_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                         "family": family.name})
        del pipe
    shutil.rmtree(work, ignore_errors=True)
    emit("gpu_families", {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "dtype": str(dtype).split(".")[-1],
        "family": args.family, "size": args.size, "steps": steps, "depth": depth, "tiny": args.tiny, "runs": rows,
    })


if __name__ == "__main__":
    main()
