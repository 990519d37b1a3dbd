"""A job's contact sheets in its store: the images read from it, the sheets written to it."""

from __future__ import annotations

import io

from PIL import Image

from farm.sheets.build import iter_sheets
from farm.sheets.draw import ImageLoader
from farm.sheets.matrix import matrix_prompt
from farm.spec import JobSpec
from farm.store import Store, layout, load_records


def store_image_loader(store: Store, job: str) -> ImageLoader:
    def load_image(record: dict) -> Image.Image:
        return Image.open(io.BytesIO(store.read_bytes(layout.job_file_key(job, record["image"]))))

    return load_image


def store_input_loader(store: Store, job: str):
    """An input image of the job by content name (farm/inputs.py, with its caps); None when absent."""
    from farm.inputs import InputError, flatten, open_image

    def load_input(name: str) -> Image.Image | None:
        try:
            return flatten(open_image(store.read_bytes(layout.input_key(job, name))))
        except (FileNotFoundError, InputError):
            return None

    return load_input


def write_sheets(
    store: Store, job: str, x: str | None = None, y: str | None = None, *, spec: JobSpec | None = None,
    **options,
) -> list[str]:
    """Build the job's sheets from its records and images and write them to its sheets folder.
    Sheets left from an earlier choice of axes are removed: the folder always shows one consistent
    set. `spec`, the job's parsed spec, lays a prompt-matrix job out as A1111 does. Options as in
    iter_sheets (z, filters, max_side, min_cell)."""
    records = load_records(store, job)
    if not records:
        raise ValueError(f"no finished images in {store.describe(job)}: nothing to put on a sheet")
    options.setdefault("matrix", matrix_prompt(spec))
    written = []
    options.setdefault("load_input", store_input_loader(store, job))
    for sheet in iter_sheets(records, store_image_loader(store, job), x, y, **options):
        key = layout.sheet_key(job, sheet.name)
        store.write_bytes(key, sheet.png())
        written.append(key)
    for key in store.list_keys(layout.sheets_prefix(job)):
        if layout.is_sheet_key(key) and key not in written:
            store.delete(key)
    return written
