"""GPU: the full-size SD1.5 architecture built from the shipped config (configs/sd15) with random
weights (the same compute as the real model), 512x512, 20 steps, fp16, batch 1/4/8, attention
SDPA / xformers (when installed) / SDPA + torch.compile: iterations/s and images/s for the plain
diffusers call and for the farm's worker path (worker/render.py, the code `farm worker` runs).
Run it on a GPU machine: python benchmarks/gpu.py [--steps 20] [--size 512] [--batches 1,4,8]
`--tiny` runs the same code on the built-in tiny model (a check that the script works on a CPU).
The families built from parts (Flux, SD3.5, Z-Image) at their real width: benchmarks/gpu_families.py."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from harness import emit, timed  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk, oil painting, dramatic light"


def build_pipeline(config_dir: Path, device, dtype):
    """Random weights in the architecture the config folder describes; nothing is downloaded."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.schedulers import EulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir / "text_encoder")),
        tokenizer=CLIPTokenizer.from_pretrained(config_dir / "tokenizer"),
        unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet")),
        scheduler=EulerDiscreteScheduler.from_pretrained(config_dir / "scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def main() -> None:
    import torch

    from farm.task import RenderTask
    from worker.render import render_images

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    if args.tiny:
        from worker.tiny import make_tiny

        config_dir = make_tiny(Path(tempfile.mkdtemp())).with_suffix(".config")
        args.size, args.steps, args.batches, args.repeat = 64, 2, "1,2", 1
    else:
        config_dir = Path(__file__).resolve().parent.parent / "configs" / "sd15"
    pipe = build_pipeline(config_dir, device, dtype)
    attentions = ["sdpa"]
    try:
        import xformers  # noqa: F401

        attentions.append("xformers")
    except ImportError:
        pass
    if cuda:
        attentions.append("sdpa+compile")

    rows = []
    for attention in attentions:
        if attention == "xformers":
            pipe.enable_xformers_memory_efficient_attention()
        elif attention == "sdpa+compile":
            pipe.disable_xformers_memory_efficient_attention()
            pipe.unet = torch.compile(pipe.unet, mode="max-autotune", fullgraph=True)
        for batch in (int(b) for b in args.batches.split(",")):
            def plain():
                generators = [torch.Generator("cpu").manual_seed(i) for i in range(batch)]
                pipe(PROMPT, num_images_per_prompt=batch, num_inference_steps=args.steps, guidance_scale=7,
                     width=args.size, height=args.size, generator=generators)

            task = RenderTask(job="bench", index=0, prompt=PROMPT, seed=1, batch_size=batch, checkpoint="random",
                              sampler="Euler", steps=args.steps, cfg=7, width=args.size, height=args.size).with_id()
            for path, fn in (("plain", plain), ("worker", lambda: render_images(pipe, task))):
                seconds = timed(fn, args.repeat)
                rows.append({"attention": attention, "batch": batch, "path": path,
                             "it_per_s": round(args.steps / seconds, 2), "images_per_s": round(batch / seconds, 3)})
    best_plain = max(r["images_per_s"] for r in rows if r["path"] == "plain")
    best_worker = max(r["images_per_s"] for r in rows if r["path"] == "worker")
    emit("gpu", {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "dtype": str(dtype).split(".")[-1],
        "size": args.size, "steps": args.steps, "tiny": args.tiny, "runs": rows,
        "worker_over_best_plain": round(best_worker / best_plain, 3),
    })


if __name__ == "__main__":
    main()
