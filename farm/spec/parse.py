"""The spec parser: reads a job YAML into a JobSpec, key by key from the parameter table
(farm/params.py), with every error located as FILE:LINE:COL. The reference for every key is
docs/job-spec.md."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

from yaml.nodes import Node

from farm.families import UNKNOWN, checkpoint_family, default_size, family
from farm.hashes import sha256_file
from farm.model_files import ModelFileError
from farm.models import Registry
from farm.parts import PartError, resolve_parts
from farm.hires import size_problem
from farm.params import ALIASES, AXIS_ORDER, DEFAULTS, HIRES_KEYS, NO_MODEL, PARAMS
from farm.samplers import eta_problem, flow_sampler, parse_sampler
from farm.spec.axes import AxisReader
from farm.spec.combine import CombineReader
from farm.spec.inpaint import InpaintReader
from farm.spec.inputs import InputReader
from farm.spec.jobspec import DEFAULT_FILENAME, SPEC_VERSION, JobSpec, job_id
from farm.spec.models import REFINER_FAMILY, ModelChecks, link_pins
from farm.upscale import DEFAULT_UPSCALE_BY, UPSCALE_AXES, UPSCALE_KEYS
from farm.upscale import size_problem as upscale_size_problem
from farm.upscale import DEFAULT_UPSCALER as UPSCALE_DEFAULT_UPSCALER
from farm.ranges import safe_len
from farm.spec.nodes import MAX_JOB_TASKS, MAX_NAME_CHARS, MAX_SPEC_BYTES, SpecError, kind
from farm.task import filename_pattern_problem

OTHER_KEYS = ("version", "name", "prompt_matrix", "batch_size", "combine", "grid", "output", "priority", "requires",
              "text_encoders", "mask")
# Keys a checkpoint's family may default when the spec leaves them out (farm/families.py `defaults`).
FAMILY_DEFAULTED = ("sampler", "schedule", "steps", "cfg", "distilled_cfg")
REQUIRED = ("prompt", "checkpoint", "seed")
MAX_BATCH_SIZE = 64  # images in one render (A1111's UI stops at 8); more images: sweep seeds
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def load_spec(
    path: str | Path, models_dir: Path | None = None, checkpoint_hashes: dict[str, str] | None = None,
    store=None,
) -> JobSpec:
    try:
        size = Path(path).stat().st_size
        if size > MAX_SPEC_BYTES:  # refused before reading: a 50 MB spec costs nothing
            raise SpecError(str(path), 1, 1, f"the spec is {size:,} bytes; the limit is {MAX_SPEC_BYTES:,}")
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(str(path), 1, 1, f"cannot read the job spec: {e}") from None
    return parse_spec(text, str(path), models_dir, checkpoint_hashes, store)


def parse_spec(
    text: str,
    filename: str = "<spec>",
    models_dir: Path | None = None,
    checkpoint_hashes: dict[str, str] | None = None,
    store=None,
) -> JobSpec:
    """Validate a spec text. Checkpoint names are checked against models_dir when given;
    checkpoint_hashes (name -> sha256, e.g. from a job record) spares hashing the files. `store`:
    the job's store, where `init_images: {job: ...}` finds a job's images."""
    known = checkpoint_hashes or {}
    parser = SpecParser(text, filename)
    parser.store = store
    spec = parser.parse(Path(models_dir) if models_dir is not None else None, known)
    spec._hashes.update(known)
    spec._hashes.update(link_pins(spec.links))
    return spec


class SpecParser(AxisReader, ModelChecks, CombineReader, InputReader, InpaintReader):
    """One pass over one spec text."""

    def parse(self, models_dir: Path | None, known: dict[str, str] | None = None) -> JobSpec:
        """known: a job record's checkpoint_hashes (it also pins each checkpoint's family)."""
        try:
            return self.parse_root(self.compose(), models_dir, known)
        except RecursionError:
            raise SpecError(self.file, 1, 1, "YAML nested too deeply; a job spec is a flat mapping") from None

    def parse_root(self, root, models_dir: Path | None, known: dict[str, str] | None) -> JobSpec:
        f = self.keys(root, [*AXIS_ORDER, *OTHER_KEYS], "the job spec", ALIASES)
        upscale = self.upscale_keys(root, f)  # A1111's Extras: no prompt, checkpoint or seed to give
        for need in () if upscale else REQUIRED:
            if need not in f:
                needs = ", ".join(REQUIRED)
                raise self.error(root, f"missing key '{need}': a job needs {needs} (see docs/job-spec.md)")

        if "version" in f:
            version = self.plain(f["version"][1])
            if isinstance(version, bool) or version != SPEC_VERSION:
                message = f"version: this seedfarm reads job spec version {SPEC_VERSION}; got {kind(version)}"
                raise self.error(f["version"][1], message)
        name = self.name(f)
        matrix = False
        if "prompt_matrix" in f:
            matrix = self.plain(f["prompt_matrix"][1])
            if not isinstance(matrix, bool):
                message = f"prompt_matrix: expected true or false, got {kind(matrix)}"
                raise self.error(f["prompt_matrix"][1], message)
        batch_size = self.integer(f["batch_size"][1], "batch_size", lo=1) if "batch_size" in f else 1
        if batch_size > MAX_BATCH_SIZE:
            message = f"batch_size: {batch_size} images in one render; at most {MAX_BATCH_SIZE} (sweep seeds for more)"
            raise self.error(f["batch_size"][1], message)

        # The keys whose values depend on other keys or on the models folder, then the table's.
        values: dict[str, Sequence] = {}
        values["prompt"] = self.prompts(f["prompt"][1], matrix) if not upscale else [""]
        if "negative_prompt" in f:
            node = f["negative_prompt"][1]
            values["negative_prompt"] = [t for t, _ in self.texts(node, "negative_prompt", "the negative prompt text")]
            self.unique(values["negative_prompt"], node, "negative_prompt")
        if "prompt_sr" in f:
            negatives = values.get("negative_prompt", DEFAULTS["negative_prompt"])
            values["prompt_sr"] = self.prompt_sr(f["prompt_sr"][1], values["prompt"], negatives)
        values["checkpoint"], checkpoint_files = (self.checkpoints(f["checkpoint"][1], models_dir) if not upscale
                                                  else ([""], {}))
        vae_files: dict[str, Path] = {}
        if "vae" in f:
            values["vae"], vae_files = self.model_names(f["vae"][1], "vae", models_dir)
        lora_files: dict[str, Path] = {}
        if "lora" in f:
            values["lora"], lora_files = self.model_names(f["lora"][1], "lora", models_dir)
        embedding_files: dict[str, Path] = {}
        if models_dir is not None and not upscale:  # after the lora axis: a tag may name a LoRA given by URL
            lora_files = {**self.lora_tags(f, models_dir), **lora_files}
            embedding_files = self.embeddings(models_dir)
        upscaler_files: dict[str, Path] = {}
        if "hr_upscaler" in f:
            values["hr_upscaler"], upscaler_files = self.upscaler_names(f["hr_upscaler"][1], models_dir)
        if "upscaler" in f:
            values["upscaler"], upscaler_files = self.upscaler_names(f["upscaler"][1], models_dir, "upscaler")
        inputs = {}
        if "init_images" in f:
            values["init_images"], inputs["init_images"] = self.input_images(f["init_images"][1], "init_images",
                                                                             models_dir, known or {})
        if "mask" in f:
            inputs["mask"] = self.mask_images(f, inputs.get("init_images", {}), models_dir, known or {})
        refiner_files: dict[str, Path] = {}
        if "refiner" in f:
            values["refiner"], refiner_files = self.refiners(f["refiner"][1], models_dir)
        for param in PARAMS:
            if param.read is None or param.key not in f:
                continue
            if param.needs and param.needs[0] not in f:
                raise self.error(f[param.key][0], param.needs[1])
            values[param.key] = param.read(self, f[param.key][1])
        self.size_axes(f, values)
        if upscale:
            values["seed"] = [0]  # nothing random in an upscale; the seed names the file
            self.upscale_sizes(f, values, inputs)
        families = {name: checkpoint_family(name, checkpoint_files, known or {}) for name in values["checkpoint"]}
        if "size" not in values and "width" not in values:
            values["size"] = [default_size(families.values())]
        rows = [family(name) for name in set(families.values())]
        family_defaulted = frozenset(k for k in FAMILY_DEFAULTED if k not in f)
        for key in family_defaulted:  # one family with its own default: the job shows it
            own = {row.default(key) if row else None for row in rows}
            if len(own) == 1 and None not in own:
                values[key] = [own.pop()]
        for axis, default in DEFAULTS.items():
            if axis not in values:
                values[axis] = list(default)
        flow = [row for row in rows if row is not None and row.flow]
        if len(flow) < len(rows):  # some checkpoint is SD1.5/SDXL (or not known here)
            self.sampler_schedule_pairs(f, values)
        self.flow_samplers(f, values, flow)
        self.sampler_eta_pairs(f, values)
        parts = self.parts(f, values["checkpoint"], families, checkpoint_files, models_dir, known or {})
        self.hires(f, values, rows)
        self.img2img(f, rows)
        self.inpaint(f)
        self.refiner(f, values, families)

        if "combine" in f:
            dims = self.combine(f["combine"][1], values)
        else:
            dims = [(a,) for a in AXIS_ORDER if a in values]
        self.check_repeats(dims, values, f["combine"][1] if "combine" in f else None)
        ordered = {a: values[a] for group in dims for a in group}
        tasks = math.prod(safe_len(ordered[group[0]]) for group in dims)
        if tasks > MAX_JOB_TASKS:
            raise self.error(root, f"the job has {tasks:,} tasks; at most {MAX_JOB_TASKS:,} (split it into jobs)")
        grid_x, grid_y = self.grid(f["grid"][1], ordered) if "grid" in f else (None, None)
        folder, filename = self.output(f["output"][1]) if "output" in f else (None, DEFAULT_FILENAME)
        priority = self.priority(f["priority"][1]) if "priority" in f else "normal"
        requires = tuple(t for t, _ in self.texts(f["requires"][1], "requires", "worker tags")) if "requires" in f else ()
        return JobSpec(
            name=name, job_id=folder or job_id(name, dims, ordered, batch_size, filename), source_text=self.source,
            file=self.file, batch_size=batch_size, grid_x=grid_x, grid_y=grid_y, filename=filename,
            values=ordered, dims=tuple(dims), checkpoint_files=checkpoint_files, vae_files=vae_files,
            upscaler_files=upscaler_files,
            priority=priority, requires=requires, family_defaults=family_defaulted, parts=parts, inputs=inputs,
            links=self.links,
            refiner_files=refiner_files, lora_files=lora_files, embedding_files=embedding_files,
        )

    def flow_samplers(self, f: dict, values: dict, flow: list) -> None:
        """A flow-matching family renders only with Euler and its schedule types: every sampler and
        schedule the spec gives must be one of those for each such checkpoint."""
        for row in flow:
            for sampler in values["sampler"] if "sampler" in f else ("Euler",):
                for schedule in values["schedule"] if "schedule" in f else ("Automatic",):
                    try:
                        flow_sampler(sampler, schedule, row.name)
                    except ValueError as e:
                        about = "sampler" if str(e).startswith("sampler") else "schedule"
                        other = "schedule" if about == "sampler" else "sampler"
                        raise self.error(f[about if about in f else other][1], str(e)) from None

    def parts(self, f: dict, checkpoints: list[str], families: dict[str, str], files: dict[str, Path],
              models_dir: Path | None, known: dict[str, str]) -> dict[str, dict]:
        """checkpoint -> role -> (file name, sha256) for each checkpoint of a family built from
        parts: from the models folder (a missing or wrong part is an error located at what names
        it), else from a job record."""
        names = []
        if "text_encoders" in f:
            names = [t for t, _ in self.texts(f["text_encoders"][1], "text_encoders", "a text encoder file name",
                                                 split=True)]
        out: dict[str, dict] = {}
        for checkpoint in checkpoints:
            row = family(families[checkpoint])
            if row is None or not row.parts:
                continue
            if f"parts:{checkpoint}" in known:
                out[checkpoint] = {role: tuple(p) for role, p in json.loads(known[f"parts:{checkpoint}"]).items()}
                continue
            if models_dir is None or checkpoint not in files:
                continue
            try:
                resolved = resolve_parts(row, files[checkpoint], Registry(models_dir), names)
            except (PartError, ModelFileError) as e:
                node = f["text_encoders"][1] if "text_encoders" in f and "text encoder '" in str(e) else f["checkpoint"][1]
                raise self.error(node, f"checkpoint '{checkpoint}': {e}") from None
            out[checkpoint] = {p.role: (p.name, sha256_file(p.path) if p.path else None) for p in resolved}
        return out

    def hires(self, f: dict, values: dict, rows: list) -> None:
        """Hires fix (farm/hires.py): its keys together make sense, the second pass's size is
        renderable for every first-pass size, and every checkpoint's family can render it."""
        given = [key for key in HIRES_KEYS if key in f]
        if not given:
            if "denoising_strength" in f and "init_images" not in f:
                raise self.error(f["denoising_strength"][0], "denoising_strength: is the strength of a hires fix "
                                 "second pass or of img2img; add hr_scale (or hr_resize, hr_upscaler) for hires fix, "
                                 "or init_images for img2img")
            return
        for row in rows:
            if row is not None and row.parts:
                raise self.error(f[given[0]][0], f"{given[0]}: hires fix is not supported on {row.name} yet "
                                 "(it renders on SD1.5 and SDXL checkpoints)")
        if "hr_scale" in f and "hr_resize" in f:
            raise self.error(f["hr_resize"][0], "give either hr_scale (a factor) or hr_resize (WxH), not both")
        if "hr_resize" in values and "0x0" in values["hr_resize"]:
            raise self.error(f["hr_resize"][1], "hr_resize: 0x0 has no size; give WxH, with 0 for the side "
                             "that keeps the aspect ratio (e.g. 1024x0)")
        for key in ("hr_prompt", "hr_negative_prompt"):
            for text in values.get(key, ()):
                if re.search(r"<\w+:[^>]*>", text):
                    raise self.error(f[key][1], f"{key}: extra-network tags (<lora:...>) are not supported in "
                                     "the hires prompt yet; the first pass's LoRAs apply to both passes")
        if "size" in values:
            sizes = [tuple(int(n) for n in s.split("x")) for s in values["size"]]
        else:
            sizes = [(w, h) for w in values["width"] for h in values["height"]]
        resizes = [tuple(int(n) for n in s.split("x")) for s in values.get("hr_resize", ())]
        targets = [(0.0, x, y) for x, y in resizes] or [(float(s), 0, 0) for s in values.get("hr_scale", (2.0,))]
        for width, height in sizes:
            for scale, x, y in targets:
                problem = size_problem(width, height, scale, x, y)
                if problem:
                    key = "hr_resize" if resizes else "hr_scale" if "hr_scale" in f else "size"
                    raise self.error(f[key][1] if key in f else f[given[0]][1], problem)
        for name in values.get("hr_sampler", ()):
            for schedule in values.get("hr_schedule", ()):
                try:
                    parse_sampler(name, schedule)
                except ValueError as e:
                    raise self.error(f["hr_schedule"][1], f"hr_schedule: {e}") from None

    def upscale_keys(self, root, f: dict) -> bool:
        """Whether the spec is an upscale job (farm/upscale.py): then it takes init_images and the
        upscale keys only, as A1111's Extras tab has no prompt, checkpoint or sampler."""
        if not any(key in f for key in UPSCALE_KEYS):
            return False
        for key, (key_node, _) in f.items():
            if key in AXIS_ORDER and key not in UPSCALE_AXES:
                raise self.error(key_node, f"{key}: an upscale job (upscaler, upscale_by, upscale_to) takes only "
                                 f"{', '.join(UPSCALE_AXES)}: it upscales images, nothing is rendered; "
                                 "upscale a job's images with init_images: {job: JOB}")
        if "init_images" not in f:
            raise self.error(root, "missing key 'init_images': an upscale job upscales the images it names "
                             "(a file, a folder or {job: JOB}; see docs/job-spec.md)")
        if "upscale_by" in f and "upscale_to" in f:
            raise self.error(f["upscale_to"][0], "give either upscale_by (a factor) or upscale_to (WxH), not both")
        return True

    def upscale_sizes(self, f: dict, values: dict, inputs: dict) -> None:
        """Every upscale of every image has a size that can be made (farm/upscale.py)."""
        targets = [(0.0, *(int(n) for n in s.split("x"))) for s in values.get("upscale_to", ())]  # sides >= 8
        targets = targets or [(float(s), 0, 0) for s in values.get("upscale_by", (DEFAULT_UPSCALE_BY,))]
        for image in inputs["init_images"].values():
            for upscaler in values.get("upscaler", (UPSCALE_DEFAULT_UPSCALER,)):
                for by, x, y in targets:
                    problem = upscale_size_problem(image.width, image.height, upscaler, by, x, y)
                    if problem:
                        key = "upscale_to" if x else "upscale_by" if "upscale_by" in f else "init_images"
                        raise self.error(f[key][1], f"{image.label}: {problem}")

    def img2img(self, f: dict, rows: list) -> None:
        """img2img (init_images) renders on SD1.5 and SDXL checkpoints, without a hires fix (A1111's
        img2img tab has none)."""
        if "init_images" not in f:
            return
        hires = [key for key in HIRES_KEYS if key in f]
        if hires:
            raise self.error(f[hires[0]][0], f"{hires[0]}: hires fix is txt2img's; img2img (init_images) renders at "
                             "the spec's size: drop the hr_ keys, or set size to the size you want")
        for row in rows:
            if row is not None and row.parts:
                raise self.error(f["init_images"][0], f"init_images: img2img is not supported on {row.name} yet "
                                 "(it renders on SD1.5 and SDXL checkpoints)")

    def refiner(self, f: dict, values: dict, families: dict[str, str]) -> None:
        """A refiner checkpoint renders only as the `refiner` of an SDXL checkpoint's txt2img
        (worker/refiner.py): not as a checkpoint, not under another family, not with hires fix or
        img2img."""
        for name, found in families.items():
            if found == REFINER_FAMILY:
                raise self.error(f["checkpoint"][1], f"checkpoint: '{name}' is an SDXL refiner; it takes over the "
                                 "end of an SDXL render: give an SDXL checkpoint and refiner: " + name)
        if not any(name != NO_MODEL for name in values.get("refiner", ())):
            return
        for name, found in families.items():
            if found not in ("SDXL", UNKNOWN):
                raise self.error(f["refiner"][0], f"refiner: checkpoint '{name}' is {found}; seedfarm's refiner "
                                 "takes over SDXL renders only (A1111 also switches SD1.5 models; not supported here)")
        given = [key for key in HIRES_KEYS if key in f]
        if given:
            raise self.error(f["refiner"][0], f"refiner: not supported with hires fix ({given[0]}) yet; render "
                             "the refined images and upscale them in another job")
        if "init_images" in f:
            raise self.error(f["refiner"][0], "refiner: not supported with img2img (init_images) yet; it takes "
                             "over txt2img renders")

    def sampler_eta_pairs(self, f: dict, values: dict) -> None:
        """Every sampler must render every eta it is swept with (samplers without eta ignore it)."""
        for name in values["sampler"]:
            for eta in values.get("eta", ()):
                problem = eta_problem(parse_sampler(name)[0], eta)
                if problem:
                    raise self.error(f["eta"][1], problem)

    def priority(self, node: Node) -> str:
        value = self.plain(node)
        if value not in ("high", "normal", "low"):
            raise self.error(node, f"priority: expected high, normal or low, got {kind(value)}")
        return value

    def name(self, f: dict) -> str:
        if "name" in f:
            name = self.text(f["name"][1], "name")
            if not _SAFE_NAME.fullmatch(name):
                message = f"name: '{name}' cannot be a folder name; use letters, digits, '.', '_' and '-'"
                raise self.error(f["name"][1], message)
            if len(name) > MAX_NAME_CHARS:
                raise self.error(f["name"][1], f"name: {len(name)} characters; at most {MAX_NAME_CHARS}")
            return name
        # The file stem, made safe: it becomes part of the job folder's name.
        return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(self.file).stem).strip("-.")[:MAX_NAME_CHARS] or "job"

    def output(self, node: Node) -> tuple[str | None, str]:
        fields = self.keys(node, ("folder", "filename"), "output")
        folder = None
        if "folder" in fields:
            folder = self.text(fields["folder"][1], "output.folder")
            if not _SAFE_NAME.fullmatch(folder) or len(folder) > MAX_NAME_CHARS:
                message = f"output.folder: '{folder}' must be one folder name of letters, digits, '.', '_' and '-'"
                raise self.error(fields["folder"][1], message)
        filename = DEFAULT_FILENAME
        if "filename" in fields:
            filename = self.text(fields["filename"][1], "output.filename")
            problem = filename_pattern_problem(filename)
            if problem:
                raise self.error(fields["filename"][1], f"output.filename: {problem}")
        return folder, filename
