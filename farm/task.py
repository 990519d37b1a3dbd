"""The RenderTask: the one contract the coordinator and the worker share.

A RenderTask is one fully resolved render (A1111's "one Generate click"): it renders `batch_size`
images with seeds seed, seed+1, ... It travels on the queue as JSON, so it holds only plain values.
Its id is a hash of what it renders, so re-submitting a job finds the work already done.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from farm.params import FILENAME_TOKENS, IN_ID_UNLESS_DEFAULT

TASK_SCHEMA_VERSION = 1

# Fields that do not change the pixels and so stay out of the id. Which of the others are in the
# id only when not at their default (fields added after v1): farm/params.py.
_NOT_IN_ID = {"id", "job", "index", "axes",
              # LoRA/embedding pins came after stores were written: ids are the resume contract, so
              # they stay out (a worker refuses a file that differs from the pin instead)
              "lora_hashes", "embedding_hashes"}
_Side = Annotated[int, Field(ge=0, le=2048)]  # an outpaint side (farm/inpaint.py MAX_OUTPAINT)
_Sha256 = Annotated[str, Field(pattern="^[0-9a-f]{64}$")]  # a pin (it names cache paths and depot keys)


class RenderTask(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    v: int = TASK_SCHEMA_VERSION
    id: str = ""
    job: str
    index: int = Field(ge=0, description="position in the job's expansion order")
    prompt: str
    negative_prompt: str = ""
    seed: int = Field(ge=0)
    batch_size: int = Field(default=1, ge=1)
    checkpoint: str = Field(description="checkpoint name as the spec gave it (file stem)")
    checkpoint_hash: str | None = Field(default=None, description="sha256 of the file, when known")
    sampler: str = Field(description="A1111 sampler name without schedule, e.g. 'DPM++ 2M'")
    schedule: str = Field(default="Automatic", description="A1111 schedule type, e.g. 'Karras'")
    steps: int = Field(ge=1)
    cfg: float
    width: int = Field(ge=8)
    height: int = Field(ge=8)
    clip_skip: int = Field(default=1, ge=1)
    rng: str = Field(default="cpu", pattern="^(cpu|nv)$", description="noise source: 'cpu' or 'nv' (A1111's NV)")
    subseed: int | None = Field(default=None, ge=0, description="A1111 variation seed; image i uses subseed + i")
    subseed_strength: float = Field(default=0.0, ge=0, le=1, description="A1111 variation strength")
    seed_resize_width: int = Field(default=0, ge=0, description="A1111 'Seed resize from' width, 0 = off")
    seed_resize_height: int = Field(default=0, ge=0, description="A1111 'Seed resize from' height, 0 = off")
    vae: str = Field(default="", description="VAE file (stem, hash or path); '' = the checkpoint's own")
    vae_hash: str | None = Field(default=None, description="sha256 of the VAE file, when known")
    eta: float | None = Field(default=None, ge=0, le=1, description="A1111 eta; None = the sampler's default")
    ensd: int = Field(default=0, ge=0, description="A1111 'Eta noise seed delta': step noise from seed + ensd")
    distilled_cfg: float | None = Field(default=None, ge=0, le=100,
                                        description="Flux guidance (Forge's 'Distilled CFG Scale'); None = not used")
    shift: float | None = Field(default=None, gt=0, le=100,
                                description="flow-matching sigma shift; None = the model's own (Flux.1 [dev]: by resolution)")
    text_encoders: dict[str, str] = Field(default_factory=dict,
                                          description="part role -> text encoder file (stem) for a family built from parts")
    part_hashes: dict[str, str] = Field(default_factory=dict, description="part role -> sha256 of its file")
    # models the spec gives by URL and sha256 (farm/spec/models.py): a worker lacking one fetches it
    model_urls: dict[str, tuple[str, str]] = Field(default_factory=dict,
                                                   description="'kind:name' -> (sha256, URL) of a model given by URL")
    # the job's LoRAs and embeddings pinned by sha256 (a worker checks those its prompts use)
    lora_hashes: dict[str, _Sha256] = Field(default_factory=dict, description="LoRA name -> sha256 of its file")
    embedding_hashes: dict[str, _Sha256] = Field(default_factory=dict,
                                                 description="embedding name -> sha256 of its file")
    kind: str = Field(default="txt2img", description="the task kind the worker dispatches on")
    # hires fix (kind "hires", farm/hires.py): the second pass; "" or None = as the first pass
    denoising_strength: float | None = Field(default=None, gt=0, le=1,
                                             description="A1111 'Denoising strength' of an img2img pass")
    hr_scale: float = Field(default=2.0, gt=0, le=16, description="hires: upscale factor (when hr_resize is 0x0)")
    hr_resize_x: int = Field(default=0, ge=0, description="hires: resize to width, 0 = from height and aspect")
    hr_resize_y: int = Field(default=0, ge=0, description="hires: resize to height, 0 = from width and aspect")
    hr_upscaler: str = Field(default="", description="hires: A1111 upscaler name ('' = not a hires task)")
    hr_steps: int = Field(default=0, ge=0, description="hires: second-pass steps, 0 = A1111's from steps")
    hr_sampler: str = Field(default="", description="hires: second-pass sampler, '' = the first pass's")
    hr_schedule: str = Field(default="", description="hires: second-pass schedule type, '' = the first pass's")
    hr_prompt: str = Field(default="", description="hires: second-pass prompt, '' = the prompt")
    hr_negative_prompt: str = Field(default="", description="hires: second-pass negative prompt, '' = the negative")
    hr_cfg: float | None = Field(default=None, ge=0, le=100, description="hires: second-pass CFG, None = cfg")
    upscaler_hash: str | None = Field(default=None, description="sha256 of the upscaler model file the task runs "
                                      "(hires' hr_upscaler, upscale's upscaler), when it names one")
    # the upscale kind (A1111's Extras; farm/upscale.py): width and height are then the output's size
    upscaler: str = Field(default="", description="upscale: A1111 upscaler or upscaler model name ('' = not upscale)")
    upscale_by: float = Field(default=0.0, ge=0, le=16, description="upscale: factor (when upscale_to is 0x0)")
    upscale_to_x: int = Field(default=0, ge=0, description="upscale: to this width, cropped to fit")
    upscale_to_y: int = Field(default=0, ge=0, description="upscale: to this height, cropped to fit")
    # input images (kinds img2img, inpaint ...; farm/inputs.py): "<sha256>.<ext>" of the bytes in the
    # job's store (layout.input_key); "" = none
    init_image: str = Field(default="", pattern=r"^([0-9a-f]{64}\.(png|jpg|jpeg|webp))?$",
                            description="img2img: the init image's content name in the job's store")
    resize_mode: str = Field(default="", description="img2img: A1111's resize mode, '' = not an img2img task")
    # inpaint and outpaint (kind "inpaint", farm/inpaint.py): A1111's img2img inpaint settings
    mask_image: str = Field(default="", pattern=r"^([0-9a-f]{64}\.(png|jpg|jpeg|webp))?$",
                            description="inpaint: the mask's content name in the job's store (white = repaint)")
    mask_blur: int = Field(default=4, ge=0, le=64, description="inpaint: A1111's 'Mask blur' (Gaussian sigma, pixels)")
    inpainting_fill: str = Field(default="original", pattern="^(fill|original|latent noise|latent nothing)$",
                                 description="inpaint: A1111's 'Masked content'")
    inpaint_full_res: bool = Field(default=False, description="inpaint: A1111's 'Only masked' inpaint area")
    inpaint_full_res_padding: int = Field(default=32, ge=0, le=256, description="inpaint: 'Only masked' padding")
    mask_invert: bool = Field(default=False, description="inpaint: A1111's 'Inpaint not masked'")
    outpaint: tuple[_Side, _Side, _Side, _Side] = Field(default=(0, 0, 0, 0),
                                                description="outpaint: pixels added (left, right, up, down)")
    # SDXL refiner (worker/refiner.py): another checkpoint takes over the same sampling
    refiner: str = Field(default="", description="refiner checkpoint (file stem); '' = none")
    refiner_hash: str | None = Field(default=None, description="sha256 of the refiner file, when known")
    refiner_switch_at: float = Field(default=0.8, gt=0, le=1,
                                     description="A1111 'Refiner switch at': the fraction of sampling after which "
                                                 "the refiner takes over (1 = never)")
    filename: str = Field(default="[seed]-[task_id]", description="output filename pattern")
    axes: dict[str, Any] = Field(default_factory=dict, description="swept axis -> value, for labels")

    def content_id(self) -> str:
        """The hash of everything that decides the pixels and where they go."""
        content = self.model_dump(exclude=_NOT_IN_ID)
        for name in IN_ID_UNLESS_DEFAULT:
            if content[name] == type(self).model_fields[name].get_default(call_default_factory=True):
                del content[name]
        blob = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def with_id(self) -> "RenderTask":
        return self.model_copy(update={"id": self.content_id()})

    @property
    def seeds(self) -> list[int]:
        """A1111 batch semantics: image i of the batch gets seed + i."""
        return [self.seed + i for i in range(self.batch_size)]

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, data: str | bytes | dict) -> "RenderTask":
        if isinstance(data, dict):
            return cls.model_validate(data)
        return cls.model_validate_json(data)

    def image_stem(self, seed: int) -> str:
        """The file name (no extension) of the image with this seed; unique per (task, seed)."""
        return render_filename(self.filename, self, seed)


_TOKEN = re.compile(r"\[([a-z_]+)\]")
_UNSAFE = re.compile(r'[\x00-\x1f<>:"/\\|?*]+')


def filename_pattern_problem(pattern: str) -> str | None:
    """Why a filename pattern is unusable, or None. Used by spec validation."""
    if not pattern.strip():
        return "filename pattern is empty"
    for name in _TOKEN.findall(pattern):
        if name not in FILENAME_TOKENS:
            return f"unknown filename token [{name}]; known: " + ", ".join(f"[{t}]" for t in FILENAME_TOKENS)
    return None


def render_filename(pattern: str, task: RenderTask, seed: int) -> str:
    """A1111-style filename tokens. Names must never collide between two images, so a pattern
    without [task_id] gets it appended, and one without [seed] gets the seed when batching."""
    if "[task_id]" not in pattern:
        pattern += "-[task_id]"
    if "[seed]" not in pattern and task.batch_size > 1:
        pattern += "-[seed]"

    def token(m: re.Match) -> str:
        value = FILENAME_TOKENS.get(m.group(1))
        return m.group(0) if value is None else str(value(task, seed))

    text = _TOKEN.sub(token, pattern)
    text = _UNSAFE.sub("_", text).strip(" .")
    return text[:180] or task.id
