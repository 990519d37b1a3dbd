"""Contact sheets: axis choice, one sheet per other-axes combination, labels, and cell geometry
checked from the pixels (each record renders as a solid colour of its own)."""

from __future__ import annotations

import io
import itertools
import json

import pytest
from PIL import Image

from conftest import farm
from farm.sheets import (
    GRID_CHUNK,
    MISSING_FILL,
    STRUCK_FILL,
    build_sheets,
    choose_axes,
    differing_parts,
    read_grid_info,
    star_sheet,
    write_sheets,
)
from farm.infotext import png_bytes
from farm.jobs import read_job, write_job_outputs, write_job_record
from farm.sheets import matrix_prompt
from farm.spec import PromptMatrix, parse_spec
from farm.store import LocalStore, MemoryStore, image_record, save_image
from farm.task import RenderTask
from factories import make_task

WHITE = (255, 255, 255)


def make_records(size: int = 64, **axes: list) -> list[dict]:
    """One record per combination of the axis values, in expansion order (first axis outermost)."""
    names = list(axes)
    records = []
    for index, combo in enumerate(itertools.product(*axes.values())):
        values = dict(zip(names, combo))
        task = make_task(
            job="job1", index=index, prompt=str(values.get("prompt", "a cat")), seed=int(values.get("seed", 1)),
            checkpoint=str(values.get("checkpoint", "tiny")), sampler="Euler a",
            steps=int(values.get("steps", 2)), cfg=float(values.get("cfg", 7)), width=size, height=size,
            axes=values,
        )
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


def store_records(store, records: list[dict]) -> None:
    """Each record's image (a solid colour) and the record, as a worker stores them."""
    for record in records:
        task = RenderTask.from_json(record["task"])
        save_image(store, task, record["seed"], png_bytes(solid(record), "x"), record)


def test_write_sheets_from_a_store_with_labels_in_the_grid_chunk():
    store = MemoryStore()
    records = make_records(checkpoint=["a", "b"], steps=[2, 4], cfg=[5, 7, 9])
    store_records(store, records)
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
    assert read_grid_info(store.read_bytes(keys[1]))["y_labels"] == ["CFG scale: 5", "CFG scale: 7", "CFG scale: 9"]

    with pytest.raises(ValueError, match="no finished images in"):
        write_sheets(store, "empty-job")


# ---- Z, filters, pages, the prompt matrix, the star sheet -------------------------------------


def test_z_axis_comes_first_in_the_sheets_and_must_be_a_free_axis():
    records = make_records(checkpoint=["a", "b"], steps=[2, 4], cfg=[5, 7, 9], seed=[1, 2])
    sheets = build_sheets(records, solid, x="cfg", y="seed", z="steps")
    assert [s.name for s in sheets] == [
        "sheet-steps=2-checkpoint=a", "sheet-steps=2-checkpoint=b",
        "sheet-steps=4-checkpoint=a", "sheet-steps=4-checkpoint=b",
    ]
    with pytest.raises(ValueError, match="'cfg' is already on x"):
        build_sheets(records, solid, x="cfg", y="seed", z="cfg")
    with pytest.raises(ValueError, match="cannot put 'sampler' on z"):
        build_sheets(records, solid, x="cfg", y="seed", z="sampler")


def test_filters_keep_matching_images_and_name_them_in_the_title():
    records = make_records(checkpoint=["a", "b"], steps=[2, 4], cfg=[5, 7.5])
    (sheet,) = build_sheets(records, solid, x="cfg", y="checkpoint", filters={"steps": "4"})
    assert sheet.name == "sheet-steps=4" and sheet.fixed == {"steps": "4"}
    assert sheet.x_labels == ["CFG scale: 5", "CFG scale: 7.5"]
    (want,) = [r for r in records if r["axes"] == {"checkpoint": "b", "steps": 4, "cfg": 7.5}]
    assert sheet.image.getpixel(cell_centre(sheet, 1, 1)) == colour(want)
    (unfiltered,) = build_sheets([r for r in records if r["axes"]["steps"] == 4], solid, x="cfg", y="checkpoint")
    title_h = sheet.origin[1] - unfiltered.origin[1]
    assert title_h > 0, "the filter is written above the sheet"
    with pytest.raises(ValueError, match=r"no image has steps=3; its values: 2, 4"):
        build_sheets(records, solid, filters={"steps": "3"})
    with pytest.raises(ValueError, match="cannot filter on 'sampler'"):
        build_sheets(records, solid, filters={"sampler": "Euler"})


def test_a_big_sweep_gets_thumbnails_then_pages_under_the_size_cap():
    records = make_records(cfg=list(range(1, 11)), seed=[1, 2, 3])
    (thumbs,) = build_sheets(records, solid, x="cfg", y="seed", max_side=512, min_cell=32)
    assert thumbs.cell_size == (51, 51) and thumbs.pages == 1  # 10 x 64 px scaled into 512
    assert thumbs.image.width == thumbs.origin[0] + 10 * 51
    pages = build_sheets(records, solid, x="cfg", y="seed", max_side=256, min_cell=32)
    assert [(p.name, p.page, p.pages) for p in pages] == [("sheet-page1", 1, 2), ("sheet-page2", 2, 2)]
    assert pages[0].cell_size == (32, 32) and len(pages[0].x_labels) == 8
    assert pages[1].x_labels == ["CFG scale: 9", "CFG scale: 10"] and len(pages[1].y_labels) == 3
    (want,) = [r for r in records if r["axes"] == {"cfg": 10, "seed": 3}]
    assert pages[1].image.getpixel(cell_centre(pages[1], 1, 2)) == colour(want)
    assert pages[1].image.width - pages[1].origin[0] == 2 * 32


def test_prompt_matrix_is_laid_out_as_a1111_half_the_parts_across():
    matrix = "a robot|red paint|in the rain|at night"
    prompts = list(PromptMatrix(matrix))
    records = make_records(cfg=[5, 7], prompt=prompts)
    sheets = build_sheets(records, solid, x="prompt", y="cfg", matrix=matrix)
    assert [s.name for s in sheets] == ["sheet-cfg=5", "sheet-cfg=7"], "the other asked axis becomes Z"
    sheet = sheets[1]
    assert (sheet.x, sheet.y) == ("matrix_x", "matrix_y")
    assert sheet.x_labels == [
        "Prompt matrix: none", "Prompt matrix: red paint", "Prompt matrix: in the rain",
        "Prompt matrix: red paint, in the rain",
    ]
    assert sheet.y_labels == ["Prompt matrix: none", "Prompt matrix: at night"]
    for i, prompt in enumerate(prompts):  # A1111: image i sits in column i mod 4, row i div 4
        (want,) = [r for r in records if r["axes"] == {"cfg": 7, "prompt": prompt}]
        assert sheet.image.getpixel(cell_centre(sheet, i % 4, i // 4)) == colour(want)
    # every label lists its parts; absent parts are gray and struck through, present ones black
    (left, top), h = sheet.origin, sheet.cell_size[1]

    def row_label_colours(row: int) -> set:
        return {c for _, c in sheet.image.crop((0, top + row * h, left, top + (row + 1) * h)).getcolors(1 << 24)}

    assert STRUCK_FILL in row_label_colours(0) and (0, 0, 0) not in row_label_colours(0)  # "at night" absent
    assert (0, 0, 0) in row_label_colours(1)
    default = build_sheets(records, solid, matrix=matrix)
    assert {(s.x, s.y) for s in default} == {("matrix_x", "matrix_y")}, "the default layout too"


def test_star_sheet_shows_each_chosen_image_with_what_differs():
    records = make_records(cfg=[5, 7, 9], seed=[1, 2])
    chosen = [records[0], records[3], records[5]]
    sheet = star_sheet(chosen, solid, "Starred")
    assert sheet.y_labels == ["CFG scale: 5\nSeed: 1", "CFG scale: 7\nSeed: 2", "CFG scale: 9\nSeed: 2"]
    assert len(sheet.cells) == 2 and len(sheet.cells[0]) == 2
    (w, h), top = sheet.cell_size, sheet.origin[1]
    caption = (sheet.image.height - top) // 2 - h
    for n, record in enumerate(chosen):
        r, c = divmod(n, 2)
        assert sheet.image.getpixel((c * w + w // 2, top + r * (h + caption) + h // 2)) == colour(record)
        assert non_white(sheet.image, (c * w, top + r * (h + caption) + h, (c + 1) * w, top + (r + 1) * (h + caption)))


def test_grid_command_on_a_store_with_z_filter_and_size_cap(tmp_path):
    store = LocalStore(tmp_path)  # a folder: `farm grid` runs in a process of its own
    records = make_records(checkpoint=["a", "b"], steps=[2, 4], cfg=list(range(1, 9)), seed=[1, 2])
    store_records(store, records)
    result = farm("grid", "job1", "--store", str(tmp_path), "--x", "cfg", "--y", "seed", "--z", "steps",
                  "--filter", "checkpoint=b", "--max-size", "256")
    assert result.returncode == 0, result.stderr
    names = [line.rsplit("/", 1)[1] for line in result.stdout.split()]
    assert names == [f"sheet-checkpoint=b-steps={s}-page{p}.png" for s in (2, 4) for p in (1, 2)]
    meta = read_grid_info(tmp_path / "job1" / "sheets" / names[3])
    assert meta["fixed"] == {"checkpoint": "b", "steps": 4} and meta["cell_size"] == [64, 64]
    assert meta["x_labels"] == [f"CFG scale: {v}" for v in (5, 6, 7, 8)] and (meta["page"], meta["pages"]) == (2, 2)
    for args, message in [
        (["--filter", "checkpoint"], "expected AXIS=VALUE"),
        (["--filter", "checkpoint=c"], "no image has checkpoint=c; its values: a, b"),
        (["--z", "cfg", "--x", "cfg"], "'cfg' is already on x"),
    ]:
        bad = farm("grid", "job1", "--store", str(tmp_path), *args)
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and message in bad.stderr, bad.stderr
    missing = farm("grid", "nojob", "--store", str(tmp_path))
    assert missing.returncode == 1 and "no job nojob" in missing.stderr


# ---- the job's own sheets: its parsed spec, never the YAML again ------------------------------

MATRIX_SPEC = """\
prompts: a robot|red paint|in the rain   # an alias of prompt
prompt_matrix: true
checkpoint: tiny
seed: 1
cfg: [5, 7]
size: 64x64
output: {folder: job1}
"""


def test_the_matrix_prompt_is_read_from_the_parsed_spec():
    assert matrix_prompt(parse_spec(MATRIX_SPEC)) == "a robot|red paint|in the rain"
    assert matrix_prompt(parse_spec(MATRIX_SPEC.replace("prompt_matrix: true", "prompt_matrix: false"))) is None
    two = MATRIX_SPEC.replace("prompts: a robot|red paint|in the rain", "prompt: [a|b, c|d]")
    assert matrix_prompt(parse_spec(two)) is None, "A1111 lays out one matrix prompt only"
    plain = MATRIX_SPEC.replace("a robot|red paint|in the rain", "a robot")
    assert matrix_prompt(parse_spec(plain)) is None and matrix_prompt(None) is None


def stored_job(spec_text: str, **axes: list) -> tuple[MemoryStore, list[dict]]:
    """A store holding a job as `farm submit` and the workers leave it: record, spec copy, images."""
    store = MemoryStore()
    spec = parse_spec(spec_text)
    write_job_record(store, spec)
    records = make_records(**axes)
    assert {r["job"] for r in records} == {spec.job_id}
    store_records(store, records)
    return store, records


def test_job_outputs_lay_a_prompt_matrix_out_from_the_stored_spec():
    store, records = stored_job(MATRIX_SPEC, cfg=[5, 7], prompt=list(PromptMatrix("a robot|red paint|in the rain")))
    assert read_job(store, "job1").spec().job_id == "job1"
    outputs = write_job_outputs(store, "job1")
    assert outputs.manifest_lines == len(records) == 8
    assert outputs.sheets == ["job1/sheets/sheet-cfg=5.png", "job1/sheets/sheet-cfg=7.png"]
    meta = read_grid_info(store.read_bytes(outputs.sheets[0]))
    assert (meta["x"], meta["y"]) == ("matrix_x", "matrix_y")
    assert meta["x_labels"] == ["Prompt matrix: none", "Prompt matrix: red paint"]
    assert store.read_text("job1/manifest.jsonl").count("\n") == 8


def test_job_outputs_follow_the_specs_grid_unless_told_otherwise():
    spec_text = MATRIX_SPEC.replace("prompt_matrix: true", "grid: {x: seed, y: cfg}").replace("seed: 1", "seed: [1, 2]")
    store, _ = stored_job(spec_text, cfg=[5, 7], seed=[1, 2], steps=[2, 3])
    outputs = write_job_outputs(store, "job1")
    assert {(m["x"], m["y"]) for m in map(read_grid_info, map(store.read_bytes, outputs.sheets))} == {("seed", "cfg")}
    outputs = write_job_outputs(store, "job1", filters={"seed": "2"})  # a filtered axis leaves its place
    assert [read_grid_info(store.read_bytes(k))["y"] for k in outputs.sheets] == ["cfg"]
    assert read_grid_info(store.read_bytes(outputs.sheets[0]))["x"] == "steps"
    outputs = write_job_outputs(store, "job1", x="steps", y="seed")
    assert {read_grid_info(store.read_bytes(k))["x"] for k in outputs.sheets} == {"steps"}
    assert list(store.list_keys("job1/sheets/")) == outputs.sheets
