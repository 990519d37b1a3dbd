"""Inpaint masks and outpaint canvases as A1111 1.10 prepares them (its img2img "Inpaint upload"
and the "Poor man's outpainting" script), re-implemented from its behaviour. Pure Pillow/numpy:
the kind worker/kinds/inpaint.py turns what `prepare` returns into latents and a composite.

White (255) in a mask means "repaint", black "keep". The steps, in A1111's order:
1. the mask image becomes one channel (an RGBA mask with transparency: its alpha, thresholded);
   `mask_invert` inverts it ("Inpaint not masked");
2. `mask_blur` blurs it with a Gaussian of that sigma, first along x then along y (OpenCV's
   kernel size and mirrored border; rounded to 8 bits as OpenCV does, within one level);
3. "Whole picture": init image and mask are each resized to the render size (the resize mode);
   the overlay mask is the blurred mask doubled (so the repainted area reaches a little past the
   blur's middle). "Only masked" (`inpaint_full_res`): the box around the mask's non-zero pixels,
   grown by `inpaint_full_res_padding` and then to the render size's aspect ratio, is cut out of the
   init image and mask and resized to the render size; the result is pasted back into that box;
4. `inpainting_fill`: every mode but "original" first fills the masked pixels with blurred colours
   from around them ("fill"); "latent noise" then puts the seed's noise, "latent nothing" zeros, in
   the masked latents (worker/kinds/inpaint.py);
5. the result is composited over the original: the original, with the overlay mask as its
   transparency, laid over the rendered image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from farm.img2img import CROP_AND_RESIZE, JUST_RESIZE, RESIZE_AND_FILL, resize_image
from farm.inpaint import ORIGINAL
from farm.inpaint import outpaint_geometry

# "fill": blur radii and how many times each blurred layer is laid over the last, widest first
_FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))


def mask_channel(image: Image.Image) -> Image.Image:
    """A mask file as one 8-bit channel: the alpha of an RGBA image that has transparency
    (thresholded at 128, as A1111 rounds a drawn mask), else the image's luminance."""
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        return image.getchannel("A").point(lambda a: 255 if a > 128 else 0)
    return image.convert("L")


def _kernel(sigma: float) -> np.ndarray:
    # OpenCV's Gaussian for an 8-bit image: 2*round(2.5 sigma)+1 taps (A1111 gives it that size)
    size = 2 * int(2.5 * sigma + 0.5) + 1
    x = np.arange(size) - (size - 1) / 2
    k = np.exp(-(x * x) / (2 * sigma * sigma))
    return k / k.sum()


def blur(mask: Image.Image, sigma_x: float, sigma_y: float | None = None) -> Image.Image:
    """A1111's mask blur: a Gaussian along x, rounded to 8 bits, then along y (sigma 0 skips an
    axis). The border mirrors without repeating the edge pixel (OpenCV's default)."""
    from scipy.ndimage import correlate1d

    sigma_y = sigma_x if sigma_y is None else sigma_y
    a = np.asarray(mask.convert("L"), dtype=np.float64)
    for axis, sigma in ((1, sigma_x), (0, sigma_y)):
        if sigma > 0:
            a = np.clip(np.rint(correlate1d(a, _kernel(sigma), axis=axis, mode="mirror")), 0, 255)
    return Image.fromarray(a.astype(np.uint8), "L")


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """The box (x1, y1, x2, y2) around the mask's non-zero pixels, grown by `padding` on each side
    within the image; None for a blank mask."""
    box = mask.getbbox()
    if box is None or not padding:
        return box
    x1, y1, x2, y2 = box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def _grow(lo: int, hi: int, want: float, limit: int) -> tuple[int, int]:
    # grow [lo, hi) to `want` long, centred, then shifted back inside [0, limit)
    extra = int(want - (hi - lo))
    lo, hi = lo - extra // 2, hi + extra - extra // 2
    if hi >= limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)


def fit_region(box: tuple[int, int, int, int], width: int, height: int, image_w: int, image_h: int
               ) -> tuple[int, int, int, int]:
    """The box grown to the render size's aspect ratio (a 128x32 box for 512x512 becomes 128x128),
    kept inside the image as far as it fits."""
    x1, y1, x2, y2 = box
    ratio = width / height
    if (x2 - x1) / (y2 - y1) > ratio:
        y1, y2 = _grow(y1, y2, (x2 - x1) / ratio, image_h)
    else:
        x1, x2 = _grow(x1, x2, (y2 - y1) * ratio, image_w)
    return x1, y1, x2, y2


def _without(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The image with the mask's area made transparent (premultiplied, as A1111 pastes it)."""
    out = Image.new("RGBa", image.size)
    out.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    return out


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": the masked area painted with the surrounding colours, by laying ever less
    blurred copies of the unmasked image over each other."""
    kept = _without(image, mask)
    out = Image.new("RGBA", image.size)
    for radius, times in _FILL_PASSES:
        layer = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(times):
            out.alpha_composite(layer)
    return out.convert("RGB")


def composite(rendered: Image.Image, overlay: Image.Image, paste_to: tuple[int, int, int, int] | None
              ) -> Image.Image:
    """The final image: the rendered one (pasted back into paste_to = (x, y, w, h) for "Only
    masked", resized to cover it) under the overlay (the original, transparent where repainted)."""
    if paste_to is not None:
        x, y, w, h = paste_to
        base = Image.new("RGBA", overlay.size)
        base.paste(resize_image(rendered, CROP_AND_RESIZE, w, h), (x, y))
        rendered = base
    out = rendered.convert("RGBA")
    out.alpha_composite(overlay)
    return out.convert("RGB")


@dataclass
class Prepared:
    """What a render starts from: `image` (render size, RGB, filled unless "original") to encode;
    `mask` (render size, "L": the inpainting model's mask and the latent blend's, unless
    `latent_mask` differs, as the outpaint's does); `overlay` and `paste_to` for `composite`.
    mask None: "Only masked" with a blank mask renders as plain img2img (A1111 does the same)."""

    image: Image.Image
    mask: Image.Image | None
    latent_mask: Image.Image | None
    overlay: Image.Image | None
    paste_to: tuple[int, int, int, int] | None


def prepare(image: Image.Image, mask: Image.Image, width: int, height: int, *, resize_mode: str = JUST_RESIZE,
            mask_blur: int = 4, invert: bool = False, inpainting_fill: str = ORIGINAL, full_res: bool = False,
            padding: int = 32, latent_mask: Image.Image | None = None) -> Prepared:
    """An init image and its mask as A1111 prepares them for a render of width x height. For
    "Only masked", a mask of another size than its image is resized to it first (Lanczos)."""
    image = image.convert("RGB")
    mask = mask_channel(mask)
    if invert:
        mask = ImageOps.invert(mask)
    if mask_blur > 0:
        mask = blur(mask, mask_blur)
    paste_to = None
    if full_res:
        if mask.size != image.size:
            mask = mask.resize(image.size, resample=Image.Resampling.LANCZOS)
        box = crop_region(mask, padding)
        if box is None:
            return Prepared(resize_image(image, resize_mode, width, height), None, None, None, None)
        box = fit_region(box, width, height, mask.width, mask.height)
        x1, y1, x2, y2 = box
        overlay_mask = mask
        mask = resize_image(mask.crop(box), RESIZE_AND_FILL, width, height).convert("L")
        paste_to = (x1, y1, x2 - x1, y2 - y1)
        overlay = _without(image, overlay_mask).convert("RGBA")
        image = resize_image(image.crop(box), RESIZE_AND_FILL, width, height)
    else:
        mask = resize_image(mask, resize_mode, width, height).convert("L")
        doubled = mask.point(lambda v: min(255, 2 * v))
        image = resize_image(image, resize_mode, width, height)
        overlay = _without(image, doubled).convert("RGBA")
    latent_mask = mask if latent_mask is None else latent_mask
    if inpainting_fill != ORIGINAL:
        image = fill(image, latent_mask)
    return Prepared(image, mask, latent_mask, overlay, paste_to)


# ---- outpaint (A1111's "Poor man's outpainting") ---------------------------------------------------

def outpaint_canvas(image: Image.Image, left: int, right: int, up: int, down: int, mask_blur: int
                    ) -> tuple[Image.Image, Image.Image, Image.Image]:
    """(canvas, mask, latent mask) of an outpaint: the image on a black canvas grown as
    farm.inpaint.outpaint_geometry says; the mask white on the new area, its edge moved 2 * mask_blur into the
    new area (the blur, 2 * mask_blur as A1111's script sets it, then reaches the old edge); the
    latent mask's edge mask_blur // 2 in."""
    (cw, ch), (left, right, up, down) = outpaint_geometry(image.width, image.height, left, right, up, down)
    canvas = Image.new("RGB", (cw, ch))
    canvas.paste(image.convert("RGB"), (left, up))

    def mask(inset: int) -> Image.Image:
        m = Image.new("L", (cw, ch), 255)
        ImageDraw.Draw(m).rectangle((left + (inset if left else 0), up + (inset if up else 0),
                                     cw - right - (inset if right else 0), ch - down - (inset if down else 0)),
                                    fill=0)
        return m

    return canvas, mask(2 * mask_blur), mask(mask_blur // 2)
