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


def test_a_mask_of_another_size_is_resized_as_a1111_does():
    image = _gradient((128, 96))
    small = _square_mask((32, 24), (8, 6, 24, 18))  # the same square at a quarter of the size
    whole = masks.prepare(image, small, 64, 64, mask_blur=0)
    assert whole.mask.size == (64, 64) and whole.mask.getpixel((32, 32)) == 255 and whole.mask.getpixel((4, 4)) == 0
    only = masks.prepare(image, small, 64, 64, mask_blur=0, full_res=True, padding=0)
    x, y, w, h = only.paste_to  # the box is found at the image's size (Lanczos rings a little past the square)
    assert only.overlay.size == (128, 96) and x <= 32 and y <= 24 and x + w >= 96 and y + h >= 72 and w == h


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


# ---- the spec: mask, outpaint and the settings; located errors --------------------------------------

BASE = "prompt: a red robot\ncheckpoint: seedfarm-tiny\nseed: 7\nsize: 64x64\nsteps: 2\nsampler: Euler a\n"


@pytest.fixture(scope="module")
def inputs_dir(tmp_path_factory):
    """A folder as make-tiny writes it: inputs/{gradient,wide,cutout}.png and masks/ by name."""
    from worker.tiny import make_tiny_inputs, make_tiny_masks

    root = tmp_path_factory.mktemp("inpaint-inputs")
    make_tiny_inputs(root)
    make_tiny_masks(root)
    (root / "partial").mkdir()  # masks for two of the three images
    for name in ("cutout.png", "gradient.png"):
        (root / "partial" / name).write_bytes((root / "masks" / name).read_bytes())
    return root


def _spec(root, extra: str):
    from farm.spec import parse_spec

    return parse_spec(BASE + extra, str(root / "job.yaml"))


def _error(root, extra: str) -> str:
    from farm.spec import SpecError

    with pytest.raises(SpecError) as e:
        _spec(root, extra)
    return str(e.value)


def _sha(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_mask_folder_is_matched_by_name_and_pinned_by_content(inputs_dir):
    from farm.expand import expand

    spec = _spec(inputs_dir, "init_images: inputs/\nmask: masks/\nmask_blur: [0, 8]\n"
                             "inpainting_fill: 'fill, latent nothing'\ninpaint_full_res: [false, true]\n")
    tasks = list(expand(spec))
    assert len(tasks) == 3 * 2 * 2 * 2 and {t.kind for t in tasks} == {"inpaint"}
    for t in tasks:
        stem = t.axes["init_images"].split("/")[-1]
        assert t.mask_image == _sha(inputs_dir / "masks" / stem) + ".png"
        assert t.init_image == _sha(inputs_dir / "inputs" / stem) + ".png"
    assert {t.inpainting_fill for t in tasks} == {"fill", "latent nothing"}
    assert {(t.mask_blur, t.inpaint_full_res) for t in tasks} == {(0, False), (0, True), (8, False), (8, True)}
    assert len({t.id for t in tasks}) == len(tasks)
    assert [t.id for t in expand(_spec(inputs_dir, "init_images: inputs/\nmask: masks/\nmask_blur: [0, 8]\n"
                                       "inpainting_fill: 'fill, latent nothing'\ninpaint_full_res: [false, true]\n"))
            ] == [t.id for t in tasks]  # the same spec and files: the same ids
    # one mask file serves every init image; A1111's defaults; the names A1111 gives the two flags
    (t,) = expand(_spec(inputs_dir, "init_images: inputs/wide.png\nmask: masks/gradient.png\n"
                                    "inpaint_full_res: Only masked\nmask_invert: inpaint not masked\n"))
    assert t.mask_image == _sha(inputs_dir / "masks" / "gradient.png") + ".png"
    assert (t.mask_blur, t.inpainting_fill, t.inpaint_full_res, t.inpaint_full_res_padding, t.mask_invert) == (
        4, "original", True, 32, True)
    assert t.denoising_strength == 0.75 and t.resize_mode == "Just resize"
    (plain,) = expand(_spec(inputs_dir, "init_images: inputs/wide.png\n"))
    assert plain.kind == "img2img" and plain.mask_image == "" and plain.id != t.id


def test_outpaint_is_an_axis_and_its_own_kind(inputs_dir):
    from farm.expand import expand
    from farm.inpaint import render_size

    spec = _spec(inputs_dir, "init_images: inputs/gradient.png\noutpaint: [{left: 32}, 'right 16, down 32']\n")
    tasks = list(expand(spec))
    assert [t.outpaint for t in tasks] == [(32, 0, 0, 0), (0, 16, 0, 32)] and {t.kind for t in tasks} == {"inpaint"}
    assert [t.inpainting_fill for t in tasks] == ["fill", "fill"]  # the outpainting script's default
    assert [render_size(t) for t in tasks] == [(128, 64), (128, 128)]
    assert [t.axes["outpaint"] for t in tasks] == ["left 32", "right 16, down 32"]


@pytest.mark.parametrize("extra, where, message", [
    ("init_images: inputs/\nmask: partial/\n", "8:7",
     "mask: no mask for init image inputs/wide.png in partial/ (expected wide.png or another image named wide)"),
    ("init_images: inputs/gradient.png\nmask: job.yaml\n", "8:7", "mask: job.yaml: not an image Pillow can read"),
    ("init_images: inputs/gradient.png\nmask: nothere.png\n", "8:7", "mask: no file or folder nothere.png"),
    ("mask: masks/\n", "7:1", "mask: marks what to repaint in an init image; add init_images"),
    ("init_images: inputs/gradient.png\nmask_blur: 4\n", "8:1", "mask_blur: is an inpaint setting; add mask"),
    ("init_images: inputs/gradient.png\nmask: masks/\noutpaint: {left: 8}\n", "8:1",
     "give either mask or outpaint"),
    ("init_images: inputs/gradient.png\noutpaint: {left: 8}\ninpaint_full_res: true\n", "9:1",
     "inpaint_full_res: outpaint repaints the whole canvas"),
    ("init_images: inputs/gradient.png\nmask: masks/\ninpainting_fill: blur\n", "9:18",
     "unknown inpainting_fill 'blur'; valid: fill, original, latent noise, latent nothing"),
    ("init_images: inputs/gradient.png\noutpaint: {lft: 8}\n", "8:11", "outpaint: unknown side 'lft'"),
    ("init_images: inputs/gradient.png\noutpaint: {left: 0}\n", "8:11", "outpaint: every side is 0"),
    ("init_images: inputs/gradient.png\noutpaint: {left: 9999}\n", "8:11", "left: expected 0 to 2048 pixels"),
    ("outpaint: {left: 8}\n", "7:1", "outpaint: pads an init image; add init_images"),
    ("init_images: inputs/gradient.png\nmask: masks/\nmask_blur: 65\n", "9:12", "mask_blur: 65 is out of range"),
    ("init_images: inputs/gradient.png\nmask: masks/\nmask_invert: maybe\n", "9:14",
     "mask_invert: expected true, false, 'Inpaint masked' or 'Inpaint not masked'"),
])
def test_inpaint_errors_are_located(inputs_dir, extra, where, message):
    (inputs_dir / "job.yaml").write_text("not an image")
    text = _error(inputs_dir, extra)
    assert text.startswith(f"{inputs_dir / 'job.yaml'}:{where}:") and message in text and "\n" not in text


# ---- infotext both ways ------------------------------------------------------------------------------

def test_inpaint_infotext_keys_as_a1111_writes_them():
    from farm.infotext import format_infotext, parse_infotext, task_parameters
    from farm.params import spec_entries_from_infotext
    from factories import make_task

    sha = "a" * 64 + ".png"
    task = make_task(kind="inpaint", init_image=sha, mask_image=sha, resize_mode="Just resize",
                     denoising_strength=0.6, mask_blur=6, mask_invert=True, inpaint_full_res=True,
                     inpaint_full_res_padding=40, inpainting_fill="latent noise")
    params = task_parameters(task, 7)
    keys = list(params)
    assert keys.index("Denoising strength") < keys.index("Mask blur") < keys.index("Mask mode") < keys.index(
        "Inpaint area") < keys.index("Masked area padding") < keys.index("Masked content")
    assert (params["Mask blur"], params["Mask mode"], params["Inpaint area"], params["Masked area padding"],
            params["Masked content"]) == (6, "Inpaint not masked", "Only masked", 40, "latent noise")
    _, _, back = parse_infotext(format_infotext(task.prompt, task.negative_prompt, params))
    notes: list = []
    entries = spec_entries_from_infotext({**back, "Prompt": task.prompt, "Negative prompt": ""}, notes)
    assert {k: entries[k] for k in ("mask_blur", "mask_invert", "inpaint_full_res", "inpaint_full_res_padding",
                                    "inpainting_fill")} == {"mask_blur": 6, "mask_invert": True, "inpaint_full_res": True,
                                                            "inpaint_full_res_padding": 40,
                                                            "inpainting_fill": "latent noise"}
    assert any("mask" in n for n in notes)
    # the defaults: only Mask blur (A1111's img2img tab writes it for every inpaint)
    plain = task_parameters(make_task(kind="inpaint", init_image=sha, mask_image=sha, denoising_strength=0.75), 7)
    assert plain["Mask blur"] == 4 and not {"Mask mode", "Inpaint area", "Masked content"} & set(plain)
    # outpaint: A1111's script blurs by twice its slider and writes that; the sides are seedfarm's key
    out = task_parameters(make_task(kind="inpaint", init_image=sha, denoising_strength=0.8, outpaint=(32, 0, 0, 16),
                                    inpainting_fill="fill"), 7)
    assert out["Mask blur"] == 8 and out["Outpaint"] == "left 32, down 16" and out["Masked content"] == "fill"
    _, _, back = parse_infotext(format_infotext("x", "", out))
    entries = spec_entries_from_infotext({**back, "Prompt": "x", "Negative prompt": ""}, [])
    assert (entries["mask_blur"], entries["outpaint"], entries["inpainting_fill"]) == (4, "left 32, down 16", "fill")
    assert make_task().model_dump()["outpaint"] == (0, 0, 0, 0)
    assert "Mask blur" not in task_parameters(make_task(), 7)


# ---- rendering with the tiny models -----------------------------------------------------------------

@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    """The tiny SD1.5 checkpoint and the tiny inpainting one (9-channel UNet), loaded from their files."""
    from worker.pipelines import load_pipeline
    from worker.tiny import make_tiny, make_tiny_inpaint

    models = tmp_path_factory.mktemp("inpaint-models")
    return {"plain": load_pipeline(make_tiny(models, "tiny15"), "cpu"),
            "inpainting": load_pipeline(make_tiny_inpaint(models), "cpu")}


def _noise_image(seed: int, size=(64, 64)) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8))


def _inpaint_task(**fields):
    from factories import make_task

    return make_task(**{"kind": "inpaint", "init_image": "a" * 64 + ".png", "mask_image": "b" * 64 + ".png",
                        "denoising_strength": 0.75, "resize_mode": "Just resize", "sampler": "Euler a", **fields})


def _slot(task, init, mask, i: int = 0):
    from worker.render import Slot

    return Slot(task, i, {"init_image": init, "mask_image": mask.convert("RGBA")})


def test_inpainting_checkpoint_is_detected_and_loads_with_the_familys_config(tmp_path):
    import json

    from farm.families import file_family, is_inpainting
    from farm.model_files import read_tensor_shapes
    from worker.pipelines import load_pipeline
    from worker.tiny import make_tiny, make_tiny_inpaint

    plain, inpainting = make_tiny(tmp_path, "plain"), make_tiny_inpaint(tmp_path)
    assert is_inpainting(read_tensor_shapes(inpainting)) and not is_inpainting(read_tensor_shapes(plain))
    assert file_family(inpainting, "checkpoint") == "SD1.5"
    # beside a config folder of the ordinary UNet (as the shipped configs/sd15 is): the 9 channels
    # come from the file
    unet_config = inpainting.with_name(inpainting.stem + ".config") / "unet" / "config.json"
    config = json.loads(unet_config.read_text())
    assert config["in_channels"] == 9
    unet_config.write_text(json.dumps({**config, "in_channels": 4}))
    pipe = load_pipeline(inpainting, "cpu")
    assert type(pipe).__name__ == "StableDiffusionPipeline" and pipe.unet.config.in_channels == 9


@pytest.mark.parametrize("model", ["plain", "inpainting"])
def test_inpaint_repaints_the_mask_only(pipes, model):
    from worker.kinds import inpaint

    init, mask = _noise_image(1), _square_mask()
    task = _inpaint_task()
    (out,) = inpaint.render(pipes[model], [_slot(task, init, mask)])
    out, original = np.asarray(out, dtype=np.int16), np.asarray(init, dtype=np.int16)
    # blur 4 reaches 10 px: outside rows 0-5 the composite keeps the original (premultiplied: +-1)
    assert abs(out[:6] - original[:6]).max() <= 1 and abs(out[:, :6] - original[:, :6]).max() <= 1
    assert abs(out[24:40, 24:40] - original[24:40, 24:40]).mean() > 20  # repainted inside


def test_the_latent_mask_holds_the_outside_to_the_init_latents_each_step(pipes, monkeypatch):
    """The final latents outside the (latent) mask are the init image's: the sampler only changed
    the masked latents (A1111's blend of the denoised latents each step). Compared as latents: the
    tiny VAE's attention spreads every latent over the whole decoded image."""
    import torch

    from worker import inpainting, masks as m
    from worker.kinds import inpaint

    pipe = pipes["plain"]
    init = _noise_image(2)
    decoded = []
    real = pipe.vae.decode
    monkeypatch.setattr(pipe.vae, "decode", lambda z, *a, **k: decoded.append(z.clone()) or real(z, *a, **k))
    with torch.inference_mode():
        start = inpainting.encode(pipe, inpainting.pixels(init)[None])[0]
    scale = pipe.vae.config.scaling_factor
    task = _inpaint_task(mask_blur=0)
    prepared = m.prepare(init, _square_mask(), 64, 64, mask_blur=0)
    inpaint.inpaint_images(pipe, [_slot(task, init, _square_mask())], [prepared])
    final = decoded[-1][0].float() * scale
    outside, inside = (slice(None), slice(0, 8)), (slice(None), slice(10, 22), slice(10, 22))  # latents are 32x32
    assert (final[outside] - start[outside]).abs().max() < 1e-4
    assert (final[inside] - start[inside]).abs().mean() > 0.1 * start.abs().mean()
    # without the blend the outside drifts as well
    inpaint.inpaint_images(pipe, [_slot(task, init, _square_mask())], [m.Prepared(prepared.image, prepared.mask,
                                                                               None, None, None)])
    free = decoded[-1][0].float() * scale
    assert (free[outside] - start[outside]).abs().max() > 100 * (final[outside] - start[outside]).abs().max()


def test_an_inpainting_unet_sees_the_mask_and_the_masked_image(pipes, monkeypatch):
    from worker.kinds import inpaint

    init, mask = _noise_image(3), _square_mask()
    task = _inpaint_task()
    (with_it,) = inpaint.render(pipes["inpainting"], [_slot(task, init, mask)])
    seen = {}
    real = inpaint._inpainting_conditioning

    def zeros(pipe, entries, size):
        seen["shape"] = tuple(real(pipe, entries, size).shape)
        return torch.zeros(seen["shape"])

    import torch

    monkeypatch.setattr(inpaint, "_inpainting_conditioning", zeros)
    (without,) = inpaint.render(pipes["inpainting"], [_slot(task, init, mask)])
    assert seen["shape"] == (1, 5, 32, 32)  # the mask and the masked image's 4 latent channels (tiny VAE: /2)
    assert abs(np.asarray(with_it, dtype=np.int16) - np.asarray(without, dtype=np.int16))[24:40, 24:40].max() > 5


def test_masked_content_changes_the_start(pipes):
    from worker.kinds import inpaint

    init, mask = _noise_image(4), _square_mask()
    # 2 of 4 steps: the start is not drowned in the noise of a full schedule
    images = {fill: np.asarray(inpaint.render(pipes["plain"], [_slot(_inpaint_task(
        inpainting_fill=fill, steps=4, denoising_strength=0.4), init, mask)])[0], dtype=np.int16)
        for fill in ("original", "fill", "latent noise", "latent nothing")}
    for a in images:
        for b in images:
            if a < b:
                assert abs(images[a] - images[b])[24:40, 24:40].max() > 5, (a, b)


def test_an_image_rendered_in_a_batch_equals_it_alone(pipes):
    from worker.kinds import inpaint

    mask_b = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask_b).ellipse((8, 8, 40, 56), fill=255)
    task = _inpaint_task(inpaint_full_res=True, inpaint_full_res_padding=4, batch_size=2)
    other = _inpaint_task(index=1, seed=99, inpaint_full_res=True, inpaint_full_res_padding=4)
    for pipe in pipes.values():
        slots = [_slot(task, _noise_image(5), _square_mask(), 0), _slot(task, _noise_image(5), _square_mask(), 1),
                 _slot(other, _noise_image(6), mask_b)]
        batch = inpaint.render(pipe, slots)
        alone = [inpaint.render(pipe, [slot])[0] for slot in slots]
        for a, b in zip(batch, alone):
            assert abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max() <= 1
        assert abs(np.asarray(batch[0], dtype=np.int16) - np.asarray(batch[1], dtype=np.int16)).max() > 5


def test_an_inpaint_task_without_its_mask_is_one_line(pipes):
    from worker.kinds import inpaint
    from worker.render import RenderError, Slot

    with pytest.raises(RenderError, match="^an inpaint task needs an init image and a mask"):
        inpaint.render(pipes["plain"], [Slot(_inpaint_task(mask_image=""), 0, {"init_image": _noise_image(1)})])


def test_outpaint_grows_the_canvas_and_keeps_the_image(pipes):
    from worker.kinds import inpaint

    init = _noise_image(7)
    task = _inpaint_task(mask_image="", outpaint=(32, 0, 0, 0), inpainting_fill="fill", mask_blur=4)
    (out,) = inpaint.render(pipes["plain"], [_slot(task, init, Image.new("L", (1, 1)))])
    assert out.size == (128, 64)  # 64 + 32 grows to 128: the image at x = 64
    out = np.asarray(out, dtype=np.int16)
    # the mask's edge 8 px into the image, blurred by 8 (20 px): from x = 64 + 28 the image itself
    assert abs(out[:, 92:] - np.asarray(init, dtype=np.int16)[:, 28:]).max() <= 1
    assert out[:, :56].std() > 5  # the new area was rendered, not left black


def test_an_inpainting_checkpoint_renders_txt2img_and_hires_with_a_full_mask(pipes, monkeypatch):
    """A1111 renders every kind on an inpainting checkpoint: without a mask the UNet's extra input
    is a mask of ones and an all-gray image."""
    import torch

    from factories import make_task
    from worker.kinds import hires
    from worker.render import Slot, render_images

    pipe = pipes["inpainting"]
    inputs = []
    # a forward hook sees the arguments as the pre-hooks left them
    hook = pipe.unet.register_forward_hook(lambda m, a, k, o: inputs.append(a[0][:1, 4:].clone()), with_kwargs=True)
    try:
        (image,) = render_images(pipe, make_task())
        (big,) = hires.render(pipe, [Slot(make_task(kind="hires", hr_upscaler="Latent", denoising_strength=0.6,
                                                    hr_scale=2.0))])
    finally:
        hook.remove()
    assert image.size == (64, 64) and big.size == (128, 128)
    mask, gray = inputs[0][:, :1], inputs[0][:, 1:]
    assert mask.shape[1] == 1 and bool((mask == 1).all())
    assert inputs[-1].shape[-1] == 64  # the hires second pass: at its own latent size (128 / 2)
    from worker import inpainting

    expected = inpainting.encode(pipe, torch.zeros(1, 3, 64, 64))
    assert (gray - expected).abs().max() < 1e-5
    # an ordinary checkpoint's UNet gets nothing added
    plain = []
    hook = pipes["plain"].unet.register_forward_hook(lambda m, a, k, o: plain.append(a[0].shape[1]),
                                                      with_kwargs=True)
    try:
        render_images(pipes["plain"], make_task())
    finally:
        hook.remove()
    assert set(plain) == {4}


def test_an_sdxl_inpainting_checkpoint_loads_and_inpaints(tmp_path):
    import torch
    from diffusers import UNet2DConditionModel

    from worker.kinds import inpaint
    from worker.pipelines import load_pipeline
    from worker.tiny import tiny_pipeline, write_checkpoint, write_config_dir

    pipe = tiny_pipeline("SDXL")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        pipe.unet = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 9}).eval()
    folder = tmp_path / "Stable-diffusion"
    folder.mkdir()
    write_config_dir(pipe, folder / "xl-inpaint.config")
    write_checkpoint(pipe, folder / "xl-inpaint.safetensors")
    loaded = load_pipeline(folder / "xl-inpaint.safetensors", "cpu")
    assert type(loaded).__name__ == "StableDiffusionXLPipeline" and loaded.unet.config.in_channels == 9
    init = _noise_image(8)
    task = _inpaint_task(checkpoint="xl-inpaint")
    (out,) = inpaint.render(loaded, [_slot(task, init, _square_mask())])
    out, original = np.asarray(out, dtype=np.int16), np.asarray(init, dtype=np.int16)
    assert abs(out[:6] - original[:6]).max() <= 1 and abs(out[24:40, 24:40] - original[24:40, 24:40]).mean() > 20


def test_renders_of_an_inpainting_checkpoint_say_conditional_mask_weight(tiny_models, tmp_path):
    from factories import make_task
    from model_tree import render
    from worker.context import WorkerContext

    ctx = WorkerContext(models_dir=tiny_models)
    _, params = render(ctx, make_task(job="cmw", checkpoint="seedfarm-tiny-inpaint"), tmp_path / "a")
    assert params["Conditional mask weight"] == 1.0
    keys = list(params)
    assert keys.index("Model") < keys.index("Conditional mask weight") < keys.index("RNG")  # A1111's place
    _, params = render(ctx, make_task(job="cmw", checkpoint="seedfarm-tiny"), tmp_path / "b")
    assert "Conditional mask weight" not in params

