"""Loading single-file (A1111-layout) checkpoints offline, and keeping them loaded.

The family (SD1.5 or SDXL) is read from the file's tensor names; the checkpoint then loads through
`from_single_file(path, config=DIR)` with a local config folder, so nothing is ever fetched from the
hub:
- DIR is `<stem>.config/` beside the checkpoint when it exists (a checkpoint with a non-standard
  architecture, such as the tiny test models, carries its own diffusers config folder);
- else the shipped folder for its family, `configs/sd15` or `configs/sdxl` (the repo's configs/, or
  the copy an installed wheel carries as worker/configs/; override the root with FARM_CONFIGS_DIR).

`.safetensors` loads by default; pickled `.ckpt`/`.pt` only with `allow_pickle`, and then only
through the weights-only unpickler (worker/safe_load.py). Anything that goes wrong while loading
becomes one `ModelLoadError` line naming the file.

A diffusers folder (farm/models.py) loads with `from_pretrained(folder, local_files_only=True)`: it
carries its own configs, so the folder is also its `seedfarm_config_dir`. A hub id (`org/name`) that
is in no models folder is fetched into the Hugging Face cache (`hub_folder`) and then loads as a
folder; offline, that fails with one line saying how to get the model.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

import torch

from farm.families import FAMILIES, NOT_A_CHECKPOINT, family, folder_family, header_family, is_inpainting
from farm.model_files import (MODEL_SUFFIXES, ModelFileError, folder_files, folder_weights, read_model_index,
                              read_tensor_shapes)
from farm.models import Registry, kind_dirs
from worker.families.base import ModelFiles
from worker.safe_load import ModelLoadError, is_pickle, load_pickle, refuse_pickle

# transformers warns at import that torchvision is absent (we do not want it); say only errors.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CLIP_VOCAB_SIZE = 49408
# the families with a shipped config folder (configs/<folder>): the ones a worker renders
RENDERED = " and ".join(sorted(f.name for f in FAMILIES if f.config_folder))

__all__ = ["ModelFiles", "ModelLoadError", "PipelineCache", "configs_dir", "load_pipeline", "checkpoint_tensors", "hub_folder"]


def configs_dir() -> Path:
    """The folder holding the offline model configs (sd15/, sdxl/ ...: each family's config_folder).
    FARM_CONFIGS_DIR wins; else the copy a wheel installs as package data, worker/configs/ (setup.py);
    else the repo's configs/ next to this package (a source checkout or an editable install)."""
    env = os.environ.get("FARM_CONFIGS_DIR")
    here = Path(__file__).resolve().parent
    candidates = [Path(env)] if env else [here / "configs", here.parent / "configs"]
    probe = family("SD1.5").config_folder
    for d in candidates:
        if (d / probe / "model_index.json").is_file():
            return d
    where = f"FARM_CONFIGS_DIR={env}" if env else " or ".join(map(str, candidates))
    raise ModelLoadError(
        f"model config folder not found ({where} has no {probe}/model_index.json); "
        "reinstall seedfarm, or set FARM_CONFIGS_DIR to the seedfarm repo's configs/ folder"
    )


def own_config_dir(checkpoint: Path) -> Path | None:
    own = checkpoint.with_name(checkpoint.stem + ".config")
    return own if (own / "model_index.json").is_file() else None


def default_device_dtype() -> tuple[torch.device, torch.dtype]:
    """CUDA fp16 when there is a GPU, else CPU fp32 (fp16 on CPU is slow and poorly supported)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.float16
    return torch.device("cpu"), torch.float32


def checkpoint_tensors(path: Path, allow_pickle: bool = False) -> dict[str, tuple]:
    """name -> (dtype, shape) of a checkpoint's tensors, checked for truncation and safety before
    diffusers sees it (a pickle's, read weights-only when allowed, have no dtype/shape here)."""
    if is_pickle(path):
        if not allow_pickle:
            raise refuse_pickle(path, "checkpoint")
        return {k: (None, ()) for k in load_pickle(path)}
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise ModelLoadError(f"{path.name}: not a model file (expected .safetensors or .gguf, "
                             "or .ckpt with pickles allowed)")
    try:
        return read_tensor_shapes(path)
    except ModelFileError as e:
        raise ModelLoadError(str(e)) from None


def config_for(path: Path, keys: dict[str, tuple]) -> Path:
    """The config folder for this checkpoint: its own, or the shipped one for its family. The wrong
    kinds of file (LoRA, VAE, SD2...) get a sentence rather than a KeyError."""
    name = header_family(keys)
    if name == NOT_A_CHECKPOINT:
        raise ModelLoadError(
            f"{path.name}: not a checkpoint of a known family (no model.diffusion_model.* weights and no "
            "Flux/SD3.5/Z-Image denoiser tensors); is it a LoRA, VAE, text encoder or embedding?"
        )
    own = own_config_dir(path)
    if own is not None:
        return own
    facts = family(name)
    if facts is None or facts.config_folder is None:
        raise ModelLoadError(f"{path.name}: {name} checkpoints are not supported ({RENDERED} are)")
    return configs_dir() / facts.config_folder


def load_pipeline(
    checkpoint_path: Path | ModelFiles,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    allow_pickle: bool = False,
):
    """A ready pipeline for an A1111-layout checkpoint, a diffusers folder, or (given ModelFiles)
    a checkpoint of a family built from parts, offline (device and dtype default to
    default_device_dtype())."""
    files = checkpoint_path if isinstance(checkpoint_path, ModelFiles) else ModelFiles(Path(checkpoint_path))
    path = files.checkpoint
    if path.is_dir():
        return load_folder(path, device, dtype, allow_pickle)
    if not path.is_file():
        raise ModelLoadError(f"{path.name}: checkpoint file not found at {path}")
    tensors = checkpoint_tensors(path, allow_pickle)
    config = config_for(path, tensors)
    device, dtype = _device_dtype(device, dtype)
    worker_family = _parts_family(header_family(tensors))
    if worker_family is not None:
        dtype = parts_compute_dtype(dtype)
        try:
            pipe = worker_family.load(files, config, dtype)
        except ModelLoadError:
            raise
        except Exception as e:  # one line naming the file
            raise ModelLoadError(_load_failure(path, config, e)) from e
        pipe.seedfarm_family = worker_family.name  # one pipeline class may serve several rows
        pipe.seedfarm_dtype = dtype  # what it computes in, whatever its weights are stored in
        return _ready(pipe, path, config, device, clip_tokenizers=False)
    pipeline_class = _pipeline_class(json.loads((config / "model_index.json").read_text())["_class_name"])
    try:
        # A pickled file is read a second time here, by diffusers, also weights-only.
        pipe = pipeline_class.from_single_file(
            str(path),
            config=str(config),
            local_files_only=True,
            torch_dtype=dtype,
            **_no_safety_checker(pipeline_class),
            # an inpainting checkpoint: the family's pipeline with its 9-channel UNet (worker/inpainting.py)
            **(_inpaint_unet(path, config, dtype) if is_inpainting(tensors) else {}),
            **(_refiner_tokenizer() if header_family(tensors) == "SDXL refiner" else {}),
        )
    except Exception as e:  # diffusers raises many types; the user needs one line naming the file
        raise ModelLoadError(_load_failure(path, config, e)) from e
    if header_family(tensors) == "SDXL refiner":  # its class is also an SDXL base's img2img pipeline's
        pipe.seedfarm_family = "SDXL refiner"
    return _ready(pipe, path, config, device)


def parts_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a family built from parts computes in: the profile's, except fp16 becomes bf16 on
    a card that has it (Flux, SD3.5 and Z-Image were trained in bf16; their activations overflow
    fp16, as ComfyUI and Forge also avoid). Turing and older cards keep fp16."""
    if dtype == torch.float16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return dtype


def _parts_family(name: str):
    """The worker module of a family built from parts, or None for SD1.5/SDXL."""
    from worker.families import PartsFamily, named

    try:
        family = named(name)
    except ValueError:
        return None
    return family if isinstance(family, PartsFamily) else None


def load_folder(folder: Path, device=None, dtype=None, allow_pickle: bool = False):
    """A diffusers folder (save_pretrained's layout): from_pretrained, offline, safetensors only
    unless pickles are allowed. SD1.5 and SDXL folders load; others are refused in one line."""
    try:
        name = folder_family(folder)
        weights = folder_weights(folder)
    except ModelFileError as e:
        raise ModelLoadError(str(e)) from None
    facts = family(name)
    if facts is None or facts.config_folder is None:
        raise ModelLoadError(f"{folder.name}: {name} diffusers folders are not supported ({RENDERED} are)")
    for component in ("unet", "vae", "text_encoder"):
        if not weights.get(component):
            raise ModelLoadError(
                f"{folder.name}: no weights in {component}/ (expected {component}/*.safetensors); "
                "is the folder complete?"
            )
    pickled = [f"{c}/{f.name}" for c, files in weights.items() for f in files if f.suffix == ".bin"]
    if pickled and not allow_pickle:
        raise ModelLoadError(
            f"{folder.name}: a diffusers folder with pickled weights ({pickled[0]}); only .safetensors files "
            "load unless the worker allows pickles (farm worker --allow-pickle, or convert it to .safetensors)"
        )
    device, dtype = _device_dtype(device, dtype)
    pipeline_class = _pipeline_class(read_model_index(folder)["_class_name"])
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    if pickled:  # diffusers logs an error for each component without .safetensors, then reads its .bin
        diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)
    try:
        # diffusers and transformers read .bin files through torch.load(weights_only=True) too.
        pipe = pipeline_class.from_pretrained(
            str(folder),
            local_files_only=True,
            dtype=dtype,  # from_pretrained's name for it (torch_dtype warns there)
            use_safetensors=True if not allow_pickle else None,  # None: .safetensors when there
            **_no_safety_checker(pipeline_class),
        )
    except Exception as e:  # one line naming the folder
        reason = (str(e).strip().splitlines() or [""])[0]
        why = f"{type(e).__name__}: {reason[:300]}"
        raise ModelLoadError(f"{folder.name}: could not load the diffusers folder ({why})") from e
    finally:
        diffusers_logging.set_verbosity(level)
    return _ready(pipe, folder, folder, device)


def hub_folder(ref: str, models_dir: Path, not_found: str) -> Path:
    """The local copy of a hub model `org/name` that is in no models folder: the Hugging Face
    cache's, downloaded there first when online (.safetensors only). Any other reference, or a hub
    id that cannot be had, raises ModelLoadError (`not_found` for a reference that is no hub id)."""
    registry = Registry(models_dir)
    if not registry.is_hub_id(ref):
        raise ModelLoadError(not_found)
    import diffusers
    from huggingface_hub import constants

    _quiet()
    try:
        # The download diffusers' own from_pretrained does (configs, tokenizers, the weights that
        # load); returns the snapshot folder, from the cache when the model is already there.
        return Path(diffusers.DiffusionPipeline.download(ref, use_safetensors=True))
    except Exception as e:
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        why = ("the Hugging Face hub is offline here (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE
               else f"the Hugging Face hub cannot give it ({type(e).__name__}: {reason})")
        # a folder searched with its subfolders, where org/name is found under that name
        dirs = [d for d, recursive in kind_dirs(registry.roots, "checkpoint") if recursive]
        target = f"{dirs[0] if dirs else 'MODELS/Stable-diffusion'}/{ref}"
        # The patterns fetch what loads (configs, tokenizers, non-variant weights), not the whole repo.
        raise ModelLoadError(
            f"checkpoint '{ref}' is not in the models folders (looked in {registry.where('checkpoint')}) "
            f"and {why}: download it into a models folder, e.g. `hf download {ref} --include '*.json' "
            f"'*.txt' '*model.safetensors' --local-dir {target}`"
        ) from None


def _device_dtype(device, dtype) -> tuple[torch.device, torch.dtype]:
    default_device, default_dtype = default_device_dtype()
    return (torch.device(device) if device is not None else default_device), (dtype or default_dtype)


def _quiet() -> None:
    """Our own log line says what loaded and how long it took; diffusers' bars and notices are noise."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # "Loading weights" bars, e.g. for each LoRA


def _pipeline_class(class_name: str):
    # Imported here: `import diffusers` costs seconds and the coordinator never needs it.
    import diffusers

    _quiet()
    return getattr(diffusers, class_name)


def _ready(pipe, path: Path, config: Path, device: torch.device, clip_tokenizers: bool = True):
    """Checks on a freshly loaded pipeline, then on its device with the attributes the rest of the
    worker reads. `config` is the diffusers config folder it was built from."""
    # A missing weight stays on the meta device and only fails later, mid-render.
    missing = [n for n, p in _named_tensors(pipe) if p.device.type == "meta"]
    if missing:
        raise ModelLoadError(
            f"{path.name}: {len(missing)} weights missing (e.g. {missing[0]}); the file does not match {config}"
        )
    # transformers 5 silently builds a 3-token placeholder tokenizer when the files are missing.
    # (A family built from parts checks its own tokenizers as it loads them.)
    # (An SDXL refiner has no first encoder: text_encoder and tokenizer are None by design.)
    for name in ("tokenizer", "tokenizer_2") if clip_tokenizers else ():
        tokenizer = getattr(pipe, name, None)
        if (name == "tokenizer" and getattr(pipe, "text_encoder", None) is not None) or tokenizer is not None:
            n = None if tokenizer is None else len(tokenizer)
            if n != CLIP_VOCAB_SIZE:
                raise ModelLoadError(
                    f"{path.name}: tokenizer from {config}/{name} has {n} tokens, expected {CLIP_VOCAB_SIZE}; "
                    "the tokenizer files are missing or broken"
                )
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe.seedfarm_config_dir = config  # a VAE file for this checkpoint is built from the same configs
    pipe.seedfarm_scheduler_config = dict(pipe.scheduler.config)  # the family's own, before any task's
    return pipe


def _inpaint_unet(path: Path, config: Path, dtype: torch.dtype) -> dict:
    """An inpainting checkpoint's UNet: the family's UNet config with 9 input channels."""
    from diffusers import UNet2DConditionModel

    from farm.families import INPAINT_CHANNELS

    unet = UNet2DConditionModel.from_single_file(str(path), config=str(config), subfolder="unet",
                                                 in_channels=INPAINT_CHANNELS, local_files_only=True,
                                                 torch_dtype=dtype)
    return {"unet": unet}


def _refiner_tokenizer() -> dict:
    """An SDXL refiner's one tokenizer is the SDXL base's second (CLIP-G): configs/sdxl's, not a copy."""
    from transformers import CLIPTokenizer

    return {"tokenizer_2": CLIPTokenizer.from_pretrained(str(configs_dir() / "sdxl" / "tokenizer_2"),
                                                         local_files_only=True)}


def _no_safety_checker(pipeline_class) -> dict:
    """SD1.5's index names a safety checker and feature extractor we neither ship nor want."""
    if pipeline_class.__name__ == "StableDiffusionPipeline":
        return {"feature_extractor": None, "safety_checker": None, "requires_safety_checker": False}
    return {}


def _load_failure(path: Path, config: Path, error: Exception) -> str:
    """One line saying why diffusers could not build the pipeline from this file."""
    reason = (str(error).strip().splitlines() or [""])[0]
    hint = (
        "; a checkpoint with another architecture needs its own diffusers config folder "
        f"beside it ({path.stem}.config/)"
        if not config.name.endswith(".config")
        else ""
    )
    if "meta tensor" in reason:  # a weight the config expects is not in the file
        return f"{path.name}: weights missing for the model described by {config}{hint}"
    if "expected shape" in reason:
        reason = reason.split(". If you want")[0].replace("Cannot load  because ", "")
        return f"{path.name}: weight shapes do not match the model described by {config} ({reason}){hint}"
    return f"{path.name}: could not load checkpoint ({type(error).__name__}: {reason[:300]})"


def _named_tensors(pipe):
    """Every weight of the pipeline's models (denoiser, VAE, text encoders: whatever its family has)."""
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            for n, p in module.named_parameters():
                yield f"{name}.{n}", p


class PipelineCache:
    """Loaded pipelines per checkpoint file, least recently used evicted beyond `keep`.

    A worker renders many tasks on one checkpoint, so the load (seconds for a real model) is paid
    once. A file replaced on disk (new size or mtime) is loaded again.
    """

    def __init__(self, keep: int = 1, loader=load_pipeline):
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.keep = keep
        self._loader = loader
        self._pipes: OrderedDict[ModelFiles, tuple[tuple, object]] = OrderedDict()
        self.load_seconds: dict[ModelFiles, float] = {}  # seconds the last load of each took
        self._lock = threading.Lock()

    @staticmethod
    def key(files: Path | ModelFiles) -> ModelFiles:
        """The cache's key for a checkpoint file or ModelFiles (resolved paths)."""
        return _key(files)

    def get(self, files: Path | ModelFiles):
        path = _key(files)
        stamp = tuple(_stamp(p) for p in path.paths())
        with self._lock:
            entry = self._pipes.get(path)
            if entry is not None and entry[0] == stamp:
                self._pipes.move_to_end(path)
                return entry[1]
            self._pipes.pop(path, None)
            # Evict before loading so two big models are never in (GPU) memory at once.
            while len(self._pipes) >= self.keep:
                self._pipes.popitem(last=False)
                free_memory()
            start = time.perf_counter()
            pipe = self._loader(path if path.parts else path.checkpoint)  # a plain checkpoint: its path
            self.load_seconds[path] = time.perf_counter() - start
            self._pipes[path] = (stamp, pipe)
            return pipe

    def __contains__(self, files: Path | ModelFiles) -> bool:
        return _key(files) in self._pipes

    def loaded(self) -> list[Path]:
        """Checkpoint files held now, least recently used first."""
        return [files.checkpoint for files in self._pipes]

    def clear(self) -> None:
        with self._lock:
            self._pipes.clear()
            free_memory()


def _key(files: Path | ModelFiles) -> ModelFiles:
    if not isinstance(files, ModelFiles):
        files = ModelFiles(Path(files))
    parts = tuple((role, p.resolve() if p is not None else None) for role, p in files.parts)
    return ModelFiles(files.checkpoint.resolve(), parts)


def _stamp(path: Path) -> tuple:
    """(size, mtime) of a checkpoint file, or of each file of a diffusers folder that loads (the
    folder's own mtime does not change when a file in it is replaced)."""
    try:
        files = folder_files(path) if path.is_dir() else [path]
        return tuple((st.st_size, st.st_mtime_ns) for st in (f.stat() for f in files))
    except OSError:
        return (-1, -1)  # the loader reports the missing file


def free_memory() -> None:
    """Give freed tensors' memory back (after dropping a pipeline, or a render out of GPU memory)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
