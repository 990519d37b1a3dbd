"""Contact sheets: axis choice, one sheet per other-axes combination, labels, and cell geometry
checked from the pixels (each record renders as a solid colour of its own)."""

from __future__ import annotations

import io
import itertools
import json

import pytest
from PIL import Image

from farm.grid import (
    GRID_CHUNK,
    MISSING_FILL,
    build_sheets,
    choose_axes,
    differing_parts,
    read_grid_info,
    write_sheets,
)
from farm.infotext import png_bytes
from farm.store import LocalStore, image_record, save_image
from farm.task import RenderTask

WHITE = (255, 255, 255)


def make_records(size: int = 64, **axes: list) -> list[dict]:
    """One record per combination of the axis values, in expansion order (first axis outermost)."""
    names = list(axes)
    records = []
    for index, combo in enumerate(itertools.product(*axes.values())):
        values = dict(zip(names, combo))
        task = RenderTask(
            job="job1", index=index, prompt=str(values.get("prompt", "a cat")), seed=int(values.get("seed", 1)),
            checkpoint=str(values.get("checkpoint", "tiny")), sampler="Euler a",
            steps=int(values.get("steps", 2)), cfg=float(values.get("cfg", 7)), width=size, height=size,
            axes=values,
        ).with_id()
        records.append(image_record(task, task.seed, "", 0.1, "w"))
    return records


def colour(record: dict) -> tuple[int, int, int]:
    """A colour of its own per record index, far from white, gray and black."""
    i = record["index"]
    return (20 + (i * 37) % 200, 30 + (i * 71) % 180, 40 + (i * 113) % 150)


def solid(record: dict) -> Image.Image:
    size = (record["task"]["width"], record["task"]["height"])
    return Image.new("RGB", size, colour(record))


def cell_centre(sheet, col: int, row: int) -> tuple[int, int]:
    (left, top), (w, h) = sheet.origin, sheet.cell_size
    return left + col * w + w // 2, top + row * h + h // 2


def non_white(image: Image.Image, box: tuple[int, int, int, int]) -> bool:
    return any(c != WHITE for _, c in image.crop(box).getcolors(maxcolors=1 << 24))


# ---- axis choice ----------------------------------------------------------------------------


def test_default_axes_most_values_on_x_next_on_y_ties_in_axis_order():
    records = make_records(checkpoint=["a", "b"], cfg=[5, 7, 9], steps=[2, 4], sampler=["Euler"])
    assert choose_axes(records) == ("cfg", "checkpoint")
    assert choose_axes(records, x="steps") == ("steps", "cfg")
    assert choose_axes(records, y="cfg") == ("checkpoint", "cfg")
    assert choose_axes(records, x="checkpoint", y="steps") == ("checkpoint", "steps")


def test_fewer_varying_axes_leave_y_or_both_empty():
    assert choose_axes(make_records(cfg=[5, 7], steps=[2])) == ("cfg", None)
    assert choose_axes(make_records(cfg=[5], steps=[2])) == (None, None)


def test_a_requested_axis_must_vary():
    records = make_records(checkpoint=["a", "b"], cfg=[5, 7, 9], steps=[2])
    with pytest.raises(ValueError, match="'steps' .*does not vary.*axes that vary: checkpoint, cfg"):
        choose_axes(records, x="steps")
    with pytest.raises(ValueError, match="'nope' on y: it is not an axis of this job; axes that vary: checkpoint, cfg"):
        choose_axes(records, y="nope")
    with pytest.raises(ValueError, match="both 'cfg'"):
        choose_axes(records, x="cfg", y="cfg")
    with pytest.raises(ValueError, match="nope"):
        build_sheets(records, solid, x="nope")


# ---- sheets and their pixels ----------------------------------------------------------------


def test_two_axes_one_sheet_with_every_cell_in_place():
    records = make_records(checkpoint=["zeta", "alpha"], cfg=[5, 7.5, 9.0])
    (sheet,) = build_sheets(records, solid)
    assert sheet.name == "sheet" and sheet.fixed == {}
    assert (sheet.x, sheet.y) == ("cfg", "checkpoint")
    # expansion order, not alphabetical; numbers without a trailing .0
    assert sheet.x_labels == ["CFG scale: 5", "CFG scale: 7.5", "CFG scale: 9"]
    assert sheet.y_labels == ["Checkpoint: zeta", "Checkpoint: alpha"]
    left, top = sheet.origin
    assert left > 0 and top > 0 and sheet.cell_size == (64, 64)
    assert sheet.image.size == (left + 3 * 64, top + 2 * 64)
    by_values = {(r["axes"]["cfg"], r["axes"]["checkpoint"]): colour(r) for r in records}
    for row, ckpt in enumerate(["zeta", "alpha"]):
        for col, cfg in enumerate([5, 7.5, 9.0]):
            assert sheet.image.getpixel(cell_centre(sheet, col, row)) == by_values[(cfg, ckpt)]


def test_label_bands_hold_text_on_white_where_the_labels_are():
    records = make_records(checkpoint=["a", "b"], cfg=[5, 7, 9])
    (sheet,) = build_sheets(records, solid)
    image, (left, top), (w, h) = sheet.image, sheet.origin, sheet.cell_size
    assert image.getpixel((0, 0)) == WHITE
    assert not non_white(image, (0, 0, left, top)), "the corner above the row labels is blank"
    for col in range(3):  # a column label above every column
        assert non_white(image, (left + col * w, 0, left + (col + 1) * w, top))
    for row in range(2):  # a row label left of every row
        assert non_white(image, (0, top + row * h, left, top + (row + 1) * h))
    # black text on white
    assert {c for _, c in image.crop((0, top, left, image.height)).getcolors(1 << 24)} >= {WHITE, (0, 0, 0)}


def test_label_font_grows_with_the_cells():
    small = build_sheets(make_records(size=64, cfg=[5, 7]), solid)[0]
    large = build_sheets(make_records(size=512, cfg=[5, 7]), solid)[0]
    assert small.origin[0] == large.origin[0] == 0, "no y axis: no row labels"
    assert large.origin[1] > 2 * small.origin[1] > 0
    assert large.image.size == (2 * 512, large.origin[1] + 512)


def test_three_axes_give_one_sheet_per_value_of_the_third():
    records = make_records(checkpoint=["a", "b"], steps=[2, 4], cfg=[5, 7, 9])
    sheets = build_sheets(records, solid)
    assert [s.name for s in sheets] == ["sheet-steps=2", "sheet-steps=4"]
    assert [s.fixed for s in sheets] == [{"steps": 2}, {"steps": 4}]
    for sheet in sheets:
        assert (sheet.x, sheet.y) == ("cfg", "checkpoint")
        for row, ckpt in enumerate(["a", "b"]):
            for col, cfg in enumerate([5, 7, 9]):
                axes = {"checkpoint": ckpt, "steps": sheet.fixed["steps"], "cfg": cfg}
                (want,) = [r for r in records if r["axes"] == axes]
                assert sheet.image.getpixel(cell_centre(sheet, col, row)) == colour(want)
        # the fixed values get a title band of their own above the column labels
        (plain,) = build_sheets(make_records(checkpoint=["a", "b"], cfg=[5, 7, 9]), solid)
        title_h = sheet.origin[1] - plain.origin[1]
        assert title_h > 0 and non_white(sheet.image, (0, 0, sheet.image.width, title_h))

    records = make_records(checkpoint=["a", "b"], steps=[2, 4], cfg=[5, 7, 9], seed=[1, 2])
    four = build_sheets(records, solid, x="cfg", y="seed")
    assert [s.name for s in four] == [
        "sheet-checkpoint=a-steps=2", "sheet-checkpoint=a-steps=4",
        "sheet-checkpoint=b-steps=2", "sheet-checkpoint=b-steps=4",
    ]


def test_missing_images_leave_gray_cells():
    records = make_records(checkpoint=["a", "b"], cfg=[5, 7])
    gone = records.pop(3)  # never rendered: no record
    lost = records[0]  # a record whose image file is gone

    def load(record):
        if record is lost:
            raise FileNotFoundError(record["image"])
        return solid(record)

    (sheet,) = build_sheets(records, load, x="cfg", y="checkpoint")
    assert gone["axes"] == {"checkpoint": "b", "cfg": 7}
    assert sheet.image.getpixel(cell_centre(sheet, 1, 1)) == MISSING_FILL
    assert sheet.image.getpixel(cell_centre(sheet, 0, 0)) == MISSING_FILL
    assert sheet.image.getpixel(cell_centre(sheet, 1, 0)) == colour(records[1])
    assert sheet.cells == [[None, records[1]["image"]], [records[2]["image"], None]]


def test_one_varying_axis_is_a_single_labelled_row_and_none_is_a_single_image():
    (row,) = build_sheets(make_records(seed=[10, 11, 12]), solid)
    assert (row.x, row.y, row.y_labels) == ("seed", None, [])
    assert row.x_labels == ["Seed: 10", "Seed: 11", "Seed: 12"]
    assert row.image.size == (3 * 64, row.origin[1] + 64)
    (single,) = build_sheets(make_records(seed=[10]), solid)
    assert single.image.size == (64, 64) and single.x_labels == []
    assert build_sheets([], solid) == []


# ---- prompt labels --------------------------------------------------------------------------


def test_prompt_labels_show_what_differs_or_are_shortened():
    prompts = [
        "a photo of a red cat sitting on a chair, oil painting",
        "a photo of a big brown dog sitting on a chair, oil painting",
    ]
    (sheet,) = build_sheets(make_records(prompt=prompts), solid)
    assert sheet.x_labels == ["Prompt: red cat", "Prompt: big brown dog"]

    matrix = ["castle", "castle, night", "castle, night, rain"]  # one value is all common part
    assert differing_parts(matrix) is None
    (sheet,) = build_sheets(make_records(prompt=matrix), solid)
    assert sheet.x_labels == ["Prompt: castle", "Prompt: castle, night", "Prompt: castle, night, rain"]

    long = ["word " * 40 + "one", "other " * 40 + "two"]
    (sheet,) = build_sheets(make_records(prompt=long), solid)
    for label in sheet.x_labels:
        assert label.startswith("Prompt: ") and label.endswith("…") and len(label) <= len("Prompt: ") + 80


def test_prompt_sheet_names_are_file_safe():
    records = make_records(prompt=["a cat: in/the <hat>", "a dog: in/the <hat>"], cfg=[5, 7], steps=[2, 3])
    sheets = build_sheets(records, solid, x="cfg", y="steps")
    assert [s.name for s in sheets] == ["sheet-prompt=cat", "sheet-prompt=dog"]


# ---- through the store ----------------------------------------------------------------------


def test_write_sheets_from_a_store_with_labels_in_the_grid_chunk(tmp_path):
    store = LocalStore(tmp_path)
    records = make_records(checkpoint=["a", "b"], steps=[2, 4], cfg=[5, 7, 9])
    for record in records:
        task = RenderTask.from_json(record["task"])
        save_image(store, task, record["seed"], png_bytes(solid(record), "x"), record)
    store.write_bytes("job1/sheets/stale-from-before.png", b"old")

    keys = write_sheets(store, "job1")
    assert keys == ["job1/sheets/sheet-steps=2.png", "job1/sheets/sheet-steps=4.png"]
    assert list(store.list_keys("job1/sheets/")) == keys, "sheets of an earlier axis choice are removed"
    data = store.read_bytes(keys[0])
    meta = read_grid_info(data)
    with Image.open(io.BytesIO(data)) as image:
        assert json.loads(image.info[GRID_CHUNK]) == meta
        image = image.convert("RGB")
        (want,) = [r for r in records if r["axes"] == {"checkpoint": "b", "steps": 2, "cfg": 9}]
        left, top = meta["origin"]
        w, h = meta["cell_size"]
        assert image.getpixel((left + 2 * w + w // 2, top + h + h // 2)) == colour(want)
    assert meta["x"] == "cfg" and meta["y"] == "checkpoint" and meta["fixed"] == {"steps": 2}
    assert meta["x_labels"] == ["CFG scale: 5", "CFG scale: 7", "CFG scale: 9"]
    assert meta["y_labels"] == ["Checkpoint: a", "Checkpoint: b"]
    assert meta["x_values"] == [5, 7, 9] and meta["y_values"] == ["a", "b"]
    assert meta["cells"][1][2] == want["image"]

    keys = write_sheets(store, "job1", x="steps", y="cfg")
    assert keys == ["job1/sheets/sheet-checkpoint=a.png", "job1/sheets/sheet-checkpoint=b.png"]
    assert list(store.list_keys("job1/sheets/")) == keys
    assert read_grid_info(store.path(keys[1]))["y_labels"] == ["CFG scale: 5", "CFG scale: 7", "CFG scale: 9"]

    with pytest.raises(ValueError, match="no finished images in"):
        write_sheets(store, "empty-job")
