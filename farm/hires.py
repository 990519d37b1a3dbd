"""A1111's hires fix (v1.10), torch-free: the upscaler names, the second pass's size and its
img2img step count. The spec parser checks with it, the worker (worker/kinds/hires.py) renders
with it, so both agree on every size and step.

A hires image is a txt2img first pass at the task's size, upscaled (in latent space, or as pixels)
to the hires size, then an img2img second pass at that size.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection

# Latent upscalers: A1111's name -> (torch interpolate mode, antialias).
LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# Pixel upscalers: the first pass decoded to an 8-bit image, resized, encoded again. A1111's
# "None" resizes with Lanczos straight to the size; "Lanczos"/"Nearest" scale by the factor with
# that filter, then Lanczos to the exact size when rounding left it off.
IMAGE_UPSCALERS = ("None", "Lanczos", "Nearest")
UPSCALERS = (*LATENT_UPSCALERS, *IMAGE_UPSCALERS)
DEFAULT_UPSCALER = "Latent"  # A1111's default
DEFAULT_DENOISING = 0.7  # A1111's hires default


def upscaler_name(text: str, models: Collection[str] | None = ()) -> str:
    """The canonical name of a hires upscaler: A1111's own ('latent (bicubic)' -> 'Latent (bicubic)'),
    else an upscaler model's, exactly as one of `models` (the models folder's upscaler names,
    farm/models.py: file stems, as for checkpoints), or, with models None (no models folder to look
    in), as given. Raises ValueError naming the valid ones."""
    text = " ".join(str(text).split())
    lookup = {name.lower(): name for name in UPSCALERS}
    name = lookup.get(text.lower())
    if name is not None:
        return name
    if models is None or text in models:
        return text
    guess = {m.lower(): m for m in models}.get(text.lower()) or next(
        iter(difflib.get_close_matches(text, [*UPSCALERS, *models], n=1)), None)
    hint = f" (did you mean '{guess}'?)" if guess else ""
    found = f"; upscaler models here: {', '.join(sorted(models))}" if models else (
        "; no upscaler model files in the models folder (ESRGAN/, RealESRGAN/, DAT/, HAT/, SwinIR/, upscale_models/)")
    raise ValueError(f"unknown hires upscaler '{text}'{hint}; valid: {', '.join(UPSCALERS)}{found}")


def is_model_upscaler(name: str) -> bool:
    """Whether an upscaler name is a model file's (ESRGAN ...), not one of A1111's built-in ones."""
    return bool(name) and name not in UPSCALERS


def hires_size(width: int, height: int, scale: float, resize_x: int = 0, resize_y: int = 0
               ) -> tuple[tuple[int, int], tuple[int, int]]:
    """((upscale to W, H), (final W, H)) of a first pass of width x height, as A1111 computes it:
    by `scale` when both resize sides are 0; to resize_x x resize_y otherwise (a 0 side keeps the
    aspect ratio; both given: upscaled to cover the box, then the latents are cropped to it)."""
    if not resize_x and not resize_y:
        size = (int(width * scale), int(height * scale))
        return size, size
    if not resize_y:
        size = (resize_x, resize_x * height // width)
        return size, size
    if not resize_x:
        size = (resize_y * width // height, resize_y)
        return size, size
    if width / height < resize_x / resize_y:
        return (resize_x, resize_x * height // width), (resize_x, resize_y)
    return (resize_y * width // height, resize_y), (resize_x, resize_y)


def size_problem(width: int, height: int, scale: float, resize_x: int = 0, resize_y: int = 0) -> str | None:
    """Why a hires size cannot render here (not multiples of 8), or None."""
    (up_w, up_h), (w, h) = hires_size(width, height, scale, resize_x, resize_y)
    for v in (up_w, up_h, w, h):
        if v % 8 or v < 8:
            how = f"hr_scale {scale:g}" if not (resize_x or resize_y) else f"hr_resize {resize_x}x{resize_y}"
            return (f"{how} makes {width}x{height} into {up_w}x{up_h}, not multiples of 8 as Stable Diffusion "
                    "needs; choose a scale or size that gives multiples of 8")
    return None


def img2img_steps(steps: int, strength: float, fixed_steps: int = 0) -> tuple[int, int]:
    """(steps of the schedule, steps run from its end) of an img2img pass, A1111's k-diffusion rule:
    with `fixed_steps` (Hires steps), that many steps of a schedule of steps/strength; else
    int(strength * steps) + 1 of `steps` (A1111 caps the strength at 0.999)."""
    strength = min(strength, 0.999)
    if fixed_steps:
        return int(fixed_steps / strength), fixed_steps
    return steps, int(strength * steps) + 1


def output_size(task) -> tuple[int, int]:
    """The (width, height) of the images a task makes: the hires size for kind "hires"; for kind
    "inpaint" the size its diffusion runs at (an outpaint's canvas)."""
    if task.kind == "inpaint":
        from farm.inpaint import render_size

        return render_size(task)
    if task.kind != "hires":
        return task.width, task.height
    return hires_size(task.width, task.height, task.hr_scale, task.hr_resize_x, task.hr_resize_y)[1]
