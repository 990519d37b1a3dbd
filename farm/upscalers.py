"""Upscaler model files (ESRGAN, RealESRGAN, SwinIR, DAT, HAT ...), torch-free: which architecture
a file holds, read from its safetensors header's tensor names (a pickled `.pth` cannot be read
without unpickling: "?"). `farm models list` shows it; the worker (worker/upscalers.py) loads the
file with spandrel, which decides for itself from the same names and the shapes.

A1111 keeps these files in models/ESRGAN, models/RealESRGAN, models/DAT, models/HAT and
models/SwinIR; ComfyUI in models/upscale_models (farm/models.py KIND_DIRS). An upscaler is named
by its file stem, as A1111 lists it (`4x-UltraSharp`).
"""

from __future__ import annotations

from pathlib import Path

from farm.model_files import read_safetensors_header

UNKNOWN = "?"

# architecture -> tensor names that, all present, say it (spandrel's own tests, a subset): most
# specific first, since SwinIR's names are also in HAT's, and Compact's are also in others'
_ARCHITECTURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ESRGAN", ("model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight")),  # the original layout
    ("ESRGAN", ("conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight")),  # RealESRGAN's RRDBNet
    ("ESRGAN", ("conv_first.weight", "RRDB_trunk.0.RDB1.conv1.weight", "trunk_conv.weight")),
    ("HAT", ("relative_position_index_SA", "layers.0.residual_group.blocks.0.conv_block.cab.0.weight")),
    ("SwinIR", ("layers.0.residual_group.blocks.0.norm1.weight", "layers.0.residual_group.blocks.0.mlp.fc1.bias")),
    ("DAT", ("before_RG.1.weight", "layers.0.blocks.0.attn.attns.0.rpe_biases")),
    ("RealESRGAN Compact", ("body.0.weight", "body.1.weight")),  # SRVGGNetCompact
)
# the wrappers trainers save the weights under, and prefixes they add (a file may use them too)
_WRAPPERS = ("params_ema.", "params.", "module.", "netG.")


def architecture_of_keys(keys) -> str:
    """The architecture whose tensor names `keys` holds, or "?"."""
    names = set(keys)
    for prefix in _WRAPPERS:
        if names and all(k.startswith(prefix) for k in names):
            names = {k[len(prefix):] for k in names}
    for name, needs in _ARCHITECTURES:
        if all(k in names for k in needs):
            return name
    return UNKNOWN


def upscaler_architecture(path: Path) -> str:
    """The architecture of an upscaler model file, from its safetensors header only (bounded
    read); "?" for a pickle. Raises farm.model_files.ModelFileError for a broken header."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return UNKNOWN
    return architecture_of_keys(k for k in read_safetensors_header(path) if k != "__metadata__")
