"""Inpaint and outpaint: A1111 1.10's mask processing (worker/masks.py), inpainting checkpoints
(9-channel UNet) detected and rendered, ordinary checkpoints inpainting through img2img with the
latent mask blended each step, outpaint canvases."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from farm.inpaint import outpaint_geometry
from worker import masks


def _square_mask(size=(64, 64), box=(16, 16, 48, 48)) -> Image.Image:
    m = Image.new("L", size, 0)
    ImageDraw.Draw(m).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=255)
    return m


def _gradient(size=(64, 64)) -> Image.Image:
    w, h = size
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                          np.full((h, w, 1), 90.0)], axis=2)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


# ---- mask processing ------------------------------------------------------------------------------

def test_blur_is_opencvs_gaussian_along_x_then_y():
    point = Image.new("L", (41, 41), 0)
    point.putpixel((20, 20), 255)
    out = np.asarray(masks.blur(point, 4), dtype=np.int16)
    # sigma 4: 2 * int(2.5 * 4 + 0.5) + 1 = 21 taps, so the spread ends 10 pixels out
    only_x = np.asarray(masks.blur(point, 4, 0), dtype=np.int16)
    assert only_x[20, 30] > 0 and only_x[20, 31] == 0 and only_x[20, 9] == 0 and only_x[19].sum() == 0
    k = masks._kernel(4)
    assert len(k) == 21
    expected = np.rint(np.rint(255 * k[10]) * k[10])  # rounded after the x pass, as OpenCV's 8 bits
    assert abs(int(out[20, 20]) - expected) <= 1
    assert abs(out - out.T).max() <= 1  # x and y alike, but for the rounding between the passes
    # no blur: unchanged
    assert masks.blur(point, 0).tobytes() == point.tobytes()


def test_blur_mirrors_the_border_without_repeating_the_edge():
    edge = Image.new("L", (20, 1), 0)
    edge.putpixel((0, 0), 255)
    out = np.asarray(masks.blur(edge, 1, 0), dtype=np.int16)[0]
    k = masks._kernel(1)  # 7 taps
    # reflect-101: the edge pixel has no mirror twin, its neighbour sees it once
    assert abs(out[0] - 255 * k[3]) <= 1 and abs(out[1] - 255 * k[2]) <= 1


def test_mask_channel_alpha_or_luminance():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 255))
    rgba.putpixel((1, 1), (0, 0, 0, 0))
    rgba.putpixel((2, 2), (0, 0, 0, 100))
    m = masks.mask_channel(rgba)
    # with transparency the alpha is the mask, thresholded at 128
    assert m.mode == "L" and m.getpixel((0, 0)) == 255 and m.getpixel((1, 1)) == 0 and m.getpixel((2, 2)) == 0
    assert masks.mask_channel(Image.new("RGB", (4, 4), (255, 255, 255))).getpixel((0, 0)) == 255
    opaque = Image.new("RGBA", (4, 4), (255, 255, 255, 255))
    assert masks.mask_channel(opaque).getpixel((0, 0)) == 255


def test_crop_region_padding_and_aspect():
    m = _square_mask((512, 512), (200, 240, 328, 272))  # a 128x32 mask
    assert masks.crop_region(m, 0) == (200, 240, 328, 272)
    assert masks.crop_region(m, 8) == (192, 232, 336, 280)
    assert masks.crop_region(Image.new("L", (8, 8)), 32) is None
    box = masks.fit_region((200, 240, 328, 272), 512, 512, 512, 512)
    assert box == (200, 192, 328, 320)  # 128x32 grows to 128x128, centred
    # at the image's edge the box slides back inside
    assert masks.fit_region((0, 0, 128, 32), 512, 512, 512, 512) == (0, 0, 128, 128)
    assert masks.fit_region((400, 490, 512, 512), 512, 512, 512, 512) == (400, 400, 512, 512)
    # a box bigger than the image's height is cut to it
    assert masks.fit_region((0, 0, 512, 100), 64, 128, 512, 600) == (0, 0, 512, 600)


def test_fill_paints_the_masked_area_from_around_it():
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    ImageDraw.Draw(image).rectangle((16, 16, 47, 47), fill=(0, 255, 0))
    filled = np.asarray(masks.fill(image, _square_mask()), dtype=np.int16)
    assert abs(filled[32, 32] - (200, 30, 30)).max() <= 3  # the green is gone: red from around it
    assert abs(filled[2, 2] - (200, 30, 30)).max() <= 3


def test_whole_picture_overlay_keeps_the_unmasked_pixels():
    image = _gradient()
    prepared = masks.prepare(image, _square_mask(), 64, 64, mask_blur=4)
    assert prepared.paste_to is None and prepared.mask.size == (64, 64)
    rendered = Image.new("RGB", (64, 64), (255, 255, 0))
    out = np.asarray(masks.composite(rendered, prepared.overlay, prepared.paste_to), dtype=np.int16)
    original = np.asarray(image, dtype=np.int16)
    assert abs(out[:6] - original[:6]).max() <= 1  # far from the mask: the original
    assert (out[32, 32] == (255, 255, 0)).all()  # inside: the render
    # the overlay mask is the blurred mask doubled: half-way up the blur is already all render
    mask = np.asarray(prepared.mask)
    edge = np.argwhere((mask > 127) & (mask < 140))[0]
    assert (out[tuple(edge)] == (255, 255, 0)).all()


def test_invert_repaints_the_rest():
    image = _gradient()
    prepared = masks.prepare(image, _square_mask(), 64, 64, mask_blur=0, invert=True)
    out = np.asarray(masks.composite(Image.new("RGB", (64, 64), (255, 255, 0)), prepared.overlay, None))
    assert (out[2, 2] == (255, 255, 0)).all()
    assert (out[32, 32] == np.asarray(image)[32, 32]).all()


def test_only_masked_renders_the_box_and_pastes_it_back():
    image = _gradient((128, 96))
    mask = _square_mask((128, 96), (60, 40, 76, 56))
    prepared = masks.prepare(image, mask, 64, 64, mask_blur=2, full_res=True, padding=8)
    # blurred mask's box (5 px spread of sigma 2) + 8 padding, then square
    x, y, w, h = prepared.paste_to
    assert w == h and (x, y) == (60 - 5 - 8, 40 - 5 - 8) and w == 16 + 2 * (5 + 8)
    assert prepared.image.size == (64, 64) and prepared.mask.size == (64, 64)
    assert prepared.overlay.size == (128, 96)
    out = np.asarray(masks.composite(Image.new("RGB", (64, 64), (255, 255, 0)), prepared.overlay, prepared.paste_to))
    assert out.shape == (96, 128, 3)
    assert (out == np.asarray(image))[:, :x].all()  # outside the box: untouched
    assert (out[48, 68] == (255, 255, 0)).all()
    # a blank mask: plain img2img of the whole picture
    blank = masks.prepare(image, Image.new("L", (128, 96)), 64, 64, full_res=True)
    assert blank.mask is None and blank.overlay is None and blank.image.size == (64, 64)


def test_fill_modes_fill_before_encoding():
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    ImageDraw.Draw(image).rectangle((16, 16, 47, 47), fill=(0, 255, 0))
    for fill in ("fill", "latent noise", "latent nothing"):
        prepared = masks.prepare(image, _square_mask(), 64, 64, mask_blur=0, inpainting_fill=fill)
        assert prepared.image.getpixel((32, 32))[1] < 80, fill
    original = masks.prepare(image, _square_mask(), 64, 64, mask_blur=0, inpainting_fill="original")
    assert original.image.getpixel((32, 32)) == (0, 255, 0)


# ---- outpaint geometry ----------------------------------------------------------------------------

def test_outpaint_geometry_grows_to_multiples_of_64():
    assert outpaint_geometry(64, 64, 32, 0, 0, 32) == ((128, 128), (64, 0, 0, 64))
    assert outpaint_geometry(64, 64, 32, 32, 0, 0) == ((128, 64), (32, 32, 0, 0))
    assert outpaint_geometry(100, 64, 10, 30, 0, 0) == ((192, 64), (23, 69, 0, 0))
    assert outpaint_geometry(64, 64, 0, 0, 0, 0) == ((64, 64), (0, 0, 0, 0))


def test_outpaint_canvas_and_masks():
    image = Image.new("RGB", (64, 64), (50, 100, 150))
    canvas, mask, latent = masks.outpaint_canvas(image, 32, 0, 0, 0, mask_blur=4)
    assert canvas.size == mask.size == latent.size == (128, 64)
    assert canvas.getpixel((64 + 10, 10)) == (50, 100, 150) and canvas.getpixel((10, 10)) == (0, 0, 0)
    # new area white; the mask's edge 8 px (2 * blur) into the old image, the latent mask's 2 px
    assert mask.getpixel((10, 10)) == 255 and mask.getpixel((64 + 7, 10)) == 255 and mask.getpixel((64 + 8, 10)) == 0
    assert latent.getpixel((64 + 1, 10)) == 255 and latent.getpixel((64 + 2, 10)) == 0
    assert mask.getpixel((127, 63)) == 0  # unpadded sides are not moved
