"""Contact sheets: A1111-style labelled X/Y/Z grids of a job's images.

    labels.py  values as text (titles: farm.params) axes.py   which axes vary; x/y choice; filters
    matrix.py  A1111's prompt-matrix layout           draw.py   wrapping, centring, pasting cells
    build.py   the sheets and the star sheet          write.py  a job's sheets in its store
"""

from farm.params import axis_title  # the grid labels are the parameter table's
from farm.sheets.axes import axis_values, choose_axes, filter_records
from farm.sheets.build import GRID_CHUNK, MAX_SIDE, MIN_CELL, Sheet, build_sheets, iter_sheets, read_grid_info, star_sheet
from farm.sheets.draw import MISSING_FILL, STRUCK_FILL
from farm.sheets.labels import differing_parts, format_value, value_id, value_texts
from farm.sheets.matrix import matrix_prompt, matrix_records
from farm.sheets.write import store_image_loader, write_sheets

__all__ = [
    "GRID_CHUNK", "MAX_SIDE", "MIN_CELL", "MISSING_FILL", "STRUCK_FILL", "Sheet", "axis_title", "axis_values",
    "build_sheets", "choose_axes", "differing_parts", "filter_records", "format_value", "iter_sheets",
    "matrix_prompt", "matrix_records", "read_grid_info", "star_sheet", "store_image_loader", "value_id",
    "value_texts", "write_sheets",
]
