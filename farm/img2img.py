"""A1111's img2img (v1.10), torch-free: its resize modes and their exact geometry, its default
strength. The spec parser checks names with it; the worker (worker/kinds/img2img.py) resizes
with it, and other kinds that take an init image (inpaint) may too.

Before the resize A1111 flattens an image with transparency onto its img2img background colour
(white by default); seedfarm's worker/inputs.py does that when it decodes an RGB input.
"""

from __future__ import annotations

from PIL import Image

JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL = "Just resize", "Crop and resize", "Resize and fill"
RESIZE_MODES = (JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL)
LATENT_RESIZE = "Just resize (latent upscale)"  # A1111's fourth mode: not supported (refused by name)
IMG2IMG_DENOISING = 0.75  # A1111's img2img default


def resize_mode_name(text: str) -> str:
    """The canonical name of a resize mode ('crop and resize' -> 'Crop and resize'). Raises
    ValueError naming the valid ones."""
    lookup = {name.lower(): name for name in RESIZE_MODES}
    name = lookup.get(" ".join(str(text).split()).lower())
    if name is None:
        latent = " (A1111's latent upscale mode is not supported)" if "latent" in str(text).lower() else ""
        raise ValueError(f"unknown resize mode '{text}'{latent}; valid: {', '.join(RESIZE_MODES)}")
    return name


def resize_image(image: Image.Image, mode: str, width: int, height: int) -> Image.Image:
    """An init image brought to width x height as A1111's resize_image does with its default
    img2img upscaler (None: Lanczos):
    - Just resize: stretched to the size.
    - Crop and resize: scaled to cover the size (aspect kept), centred, the overhang cut off.
    - Resize and fill: scaled to fit inside (aspect kept), centred, and the empty bands filled by
      stretching the image's first and last row (or column) of pixels across them."""
    lanczos = Image.Resampling.LANCZOS
    if mode == JUST_RESIZE:
        return image.resize((width, height), resample=lanczos)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == CROP_AND_RESIZE:
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
    elif mode == RESIZE_AND_FILL:
        src_w = width if ratio < src_ratio else image.width * height // image.height
        src_h = height if ratio >= src_ratio else image.height * width // image.width
    else:
        raise ValueError(f"unknown resize mode '{mode}'")
    resized = image.resize((src_w, src_h), resample=lanczos)
    out = Image.new("RGB", (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if mode == RESIZE_AND_FILL:
        if ratio < src_ratio:  # bands above and below: the top and bottom edge rows, stretched
            band = height // 2 - src_h // 2
            if band > 0:
                out.paste(resized.resize((width, band), box=(0, 0, width, 0)), box=(0, 0))
                out.paste(resized.resize((width, band), box=(0, src_h, width, src_h)), box=(0, band + src_h))
        elif ratio > src_ratio:  # bands left and right: the edge columns
            band = width // 2 - src_w // 2
            if band > 0:
                out.paste(resized.resize((band, height), box=(0, 0, 0, height)), box=(0, 0))
                out.paste(resized.resize((band, height), box=(src_w, 0, src_w, height)), box=(band + src_w, 0))
    return out
