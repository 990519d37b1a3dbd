"""The spec's inpaint and outpaint keys (farm/inpaint.py): `mask` (one image for every init image,
or a folder holding a mask per init image, matched by file stem as A1111's batch inpaint does),
the inpaint settings' axes, `outpaint`, and the checks that make them one located error each.

A mask is pinned by content like an init image (farm/inputs.py) and stored under the init image's
axis value, so a task finds its mask from its init image, and a job record's pins (`farm resume`)
need no files.
"""

from __future__ import annotations

import json
from pathlib import Path

from yaml.nodes import Node, SequenceNode

from farm.inpaint import INPAINT_AREAS, MASK_MODES, fill_name, flag, outpaint_sides, outpaint_text
from farm.inputs import InputError, InputImage, label, pin, read_file

INPAINT_KEYS = ("mask_blur", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding", "mask_invert")


class InpaintReader:
    """Mixed into the spec parser (after InputReader)."""

    def mask_images(self, f: dict, init: dict[str, InputImage], models_dir: Path | None, known: dict
                    ) -> dict[str, InputImage]:
        """init image axis value -> its mask, pinned."""
        key, node = f["mask"]
        if "init_images" not in f:
            raise self.error(key, "mask: marks what to repaint in an init image; add init_images")
        if "inputs:mask" in known:  # a job record's pins
            return {p.value: p for p in (InputImage.from_record(e) for e in json.loads(known["inputs:mask"]))}
        (text, item), *more = self.texts(node, "mask", "a mask image, or a folder with a mask per init image")
        if more:
            raise self.error(node, "mask: give one mask image (for every init image) or one folder of masks "
                                   "named as the init images")
        _, files = self.local_files(text, item, "mask", models_dir)
        by_stem = {file.stem: file for file in files}
        out: dict[str, InputImage] = {}
        for value in init:
            # one file serves every init image; a folder has one per init image, by stem
            file = files[0] if len(files) == 1 else by_stem.get(label(value))
            if file is None:
                raise self.error(item, f"mask: no mask for init image {value} in {text} (expected "
                                       f"{label(value)}.png or another image named {label(value)})")
            try:
                out[value] = pin(value, read_file(file), str(file))
            except InputError as e:
                raise self.error(item, f"mask: {file.name}: {e}") from None
        return out

    def fills(self, node: Node) -> list[str]:
        out = []
        for text, item in self.texts(node, "inpainting_fill", "A1111's masked content such as 'fill'", split=True):
            try:
                out.append(fill_name(text))
            except ValueError as e:
                raise self.error(item, f"inpainting_fill: {e}") from None
        self.unique(out, node, "inpainting_fill")
        return out

    def flags(self, node: Node, axis: str) -> list[bool]:
        """A yes/no axis: true/false (or a list of both), or A1111's names for the two."""
        names = {"inpaint_full_res": INPAINT_AREAS, "mask_invert": MASK_MODES}[axis]
        out = []
        for item in node.value if isinstance(node, SequenceNode) else [node]:
            try:
                out.append(flag(self.plain(item), names))
            except ValueError as e:
                raise self.error(item, f"{axis}: {e}") from None
        if not out:
            raise self.error(node, f"{axis}: the list is empty; give true or false")
        self.unique(out, node, axis)
        return out

    def outpaints(self, node: Node) -> list[str]:
        """outpaint: {left: 32, down: 32} (or the text 'left 32, down 32'), or a list of them (an axis)."""
        out = []
        for item in node.value if isinstance(node, SequenceNode) else [node]:
            try:
                out.append(outpaint_text(outpaint_sides(self.plain(item))))
            except ValueError as e:
                raise self.error(item, f"outpaint: {e}") from None
        if not out:
            raise self.error(node, "outpaint: the list is empty; give sides like {left: 32, down: 32}")
        self.unique(out, node, "outpaint")
        return out

    def inpaint(self, f: dict) -> None:
        """The inpaint settings need a mask or an outpaint; outpaint draws its own mask and
        repaints the whole canvas (A1111's script has no "Only masked")."""
        given = [key for key in INPAINT_KEYS if key in f]
        if given and "mask" not in f and "outpaint" not in f:
            raise self.error(f[given[0]][0], f"{given[0]}: is an inpaint setting; add mask (and init_images), "
                                             "or outpaint")
        if "outpaint" in f and "mask" in f:
            raise self.error(f["mask"][0], "mask: outpaint makes its own mask (the new area); give either "
                                           "mask or outpaint")
        for key in ("inpaint_full_res", "inpaint_full_res_padding"):
            if "outpaint" in f and key in f:
                raise self.error(f[key][0], f"{key}: outpaint repaints the whole canvas (A1111's script does "
                                            "too); drop it")
