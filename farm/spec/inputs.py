"""The spec's input-image keys (init_images: farm/inputs.py): a file, a folder (an axis over its
images in name order), a list of files or folders, or `{job: JOB, filter: starred|all}` (the
images of a job in the same store). Every image is read, checked and pinned here, so a bad one is
an error located at the key and nothing is queued.

A relative path is looked up beside the spec file first, then in the models folder (so the example
specs find the images `farm models make-tiny DIR` writes into DIR/inputs/). A spec read back from
a job record (`farm resume`) takes the pinned images from the record instead of the files.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from yaml.nodes import MappingNode, Node

from farm.img2img import resize_mode_name
from farm.inputs import InputError, InputImage, folder_images, job_images, pin, read_file
from farm.spec.nodes import kind

# An image in the store named by its key (what `{job: ...}` and the star export write): a job's
# rendered image or one of its inputs; read from the store when no local file has that path.
_STORE_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/(images|inputs)/[A-Za-z0-9][A-Za-z0-9._-]*\.(png|jpg|jpeg|webp)")


class InputReader:
    """Mixed into the spec parser; `store` (the job's store) is set when the caller has one."""

    store = None

    def input_images(self, node: Node, axis: str, models_dir: Path | None, known: dict
                     ) -> tuple[list[str], dict[str, InputImage]]:
        """(axis values, value -> pinned image) of an input-image key."""
        if f"inputs:{axis}" in known:  # a job record's pins: the files need not be here
            pinned = [InputImage.from_record(e) for e in json.loads(known[f"inputs:{axis}"])]
            return [p.value for p in pinned], {p.value: p for p in pinned}
        items: list[InputImage] = []
        if isinstance(node, MappingNode):
            items = self._job_inputs(node, axis)
        else:
            for text, item in self.texts(node, axis, "an image file or a folder of images, or {job: JOB}"):
                items += self._file_inputs(text, item, axis, models_dir)
        seen: dict[str, str] = {}
        for image in items:
            if image.name in seen:
                raise self.error(node, f"{axis}: {image.value} is the same image as {seen[image.name]}; "
                                       "list it once")
            seen[image.name] = image.value
        return [i.value for i in items], {i.value: i for i in items}

    def _file_inputs(self, text: str, node: Node, axis: str, models_dir: Path | None) -> list[InputImage]:
        if _STORE_IMAGE.fullmatch(text) and self.store is not None and self.store.exists(text):
            try:  # JOB/images/STEM.png or JOB/inputs/<sha256>.<ext>: an image of the job's store
                return [pin(text, self.store.read_bytes(text), f"store:{text}")]
            except InputError as e:
                raise self.error(node, f"{axis}: {text}: {e}") from None
        path, files = self.local_files(text, node, axis, models_dir)
        out = []
        for file in files:
            value = text if file == path else f"{text.rstrip('/')}/{file.name}"
            try:
                out.append(pin(value, read_file(file), str(file)))
            except InputError as e:
                raise self.error(node, f"{axis}: {value}: {e}") from None
        return out

    def local_files(self, text: str, node: Node, axis: str, models_dir: Path | None) -> tuple[Path, list[Path]]:
        """(the path `text` names, its image files: itself, or a folder's in name order). A relative
        path is looked up beside the spec, then in the models folder; a missing one is a located error."""
        path = Path(text).expanduser()
        if not path.is_absolute():
            bases = ([Path(self.file).parent] if self.file and not self.file.startswith("<") else [Path.cwd()])
            # models_dir may join several roots with os.pathsep (FARM_MODELS; `farm run`'s model cache)
            if models_dir is not None:
                bases += [Path(root) for root in str(models_dir).split(os.pathsep) if root]
            path = next((base / path for base in bases if (base / path).exists()), bases[0] / path)
        if not path.exists():
            raise self.error(node, f"{axis}: no file or folder {text} (relative paths are looked up beside the "
                                   "spec, then in the models folder)")
        try:
            return path, folder_images(path) if path.is_dir() else [path]
        except InputError as e:
            raise self.error(node, f"{axis}: {text}: {e}") from None

    def _job_inputs(self, node: MappingNode, axis: str) -> list[InputImage]:
        f = self.keys(node, ("job", "filter"), axis)
        if "job" not in f:
            raise self.error(node, f"{axis}: give the job whose images to use: {{job: JOB, filter: starred}}")
        job = self.text(f["job"][1], f"{axis}.job")
        starred = False
        if "filter" in f:
            value = self.plain(f["filter"][1])
            if value not in ("starred", "all"):
                raise self.error(f["filter"][1], f"{axis}.filter: expected starred or all, got {kind(value)}")
            starred = value == "starred"
        if self.store is None:
            raise self.error(f["job"][1], f"{axis}: images of job {job} are read from the job's store; "
                                          "give it (--store, or --out with farm run)")
        try:
            out = []
            for value, key in job_images(self.store, job, starred):
                try:
                    data = self.store.read_bytes(key)
                except FileNotFoundError:
                    raise InputError(f"{value} is listed in its job's records but not in the store") from None
                out.append(pin(value, data, f"store:{key}"))
            return out
        except InputError as e:
            raise self.error(f["job"][1], f"{axis}: {e}") from None

    def resize_modes(self, node: Node) -> list[str]:
        out = []
        for text, item in self.texts(node, "resize_mode", "a resize mode such as 'Crop and resize'"):
            try:
                out.append(resize_mode_name(text))
            except ValueError as e:
                raise self.error(item, f"resize_mode: {e}") from None
        self.unique(out, node, "resize_mode")
        return out
