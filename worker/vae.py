"""VAEs: a VAE file chosen per task in place of the checkpoint's own, and safe decoding.

A half-precision VAE of many SD1.5 fine-tunes (and SDXL's) overflows to NaN, which A1111 shows as a
black image. `guard_decode` wraps the VAE's decode: a NaN/inf result is decoded again in float32
with a warning, and the VAE stays in float32 from then on (A1111 does the same). The wrapper also
casts the latents to the VAE's dtype, which lets a float32 VAE (`--no-half-vae`) sit in an fp16
pipeline.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from farm.model_files import ModelFileError, read_safetensors_header
from worker.safe_load import ModelLoadError, is_pickle, load_pickle, refuse_pickle

log = logging.getLogger("seedfarm.worker")


def guard_decode(vae) -> None:
    """Wrap vae.decode once: inputs cast to the VAE's dtype, non-finite output retried in fp32."""
    if getattr(vae, "_seedfarm_guarded", False):
        return
    decode = vae.decode

    def guarded(z, *args, **kwargs):
        out = decode(z.to(vae.dtype), *args, **kwargs)
        sample = out[0] if isinstance(out, tuple) else out.sample
        if torch.isfinite(sample).all() or vae.dtype == torch.float32:
            return out
        log.warning("VAE produced NaN in %s (a black image); decoding again with the VAE in float32 "
                    "(start the worker with --no-half-vae to skip the first try)", str(vae.dtype).removeprefix("torch."))
        vae.to(torch.float32)
        return decode(z.to(torch.float32), *args, **kwargs)

    vae.decode = guarded
    vae._seedfarm_guarded = True


def load_vae(path: Path, config_dir: Path, allow_pickle: bool = False):
    """An AutoencoderKL from an A1111 VAE file (`encoder.*`/`decoder.*` keys, as A1111's models/VAE
    holds them), built with the checkpoint's config folder (the VAE's shape is the family's)."""
    from diffusers import AutoencoderKL

    path = Path(path)
    if is_pickle(path):
        if not allow_pickle:
            raise refuse_pickle(path, "VAE")
        load_pickle(path)  # refuses a pickle that would run code before diffusers reads it (weights-only too)
    else:
        try:
            keys = read_safetensors_header(path)
        except ModelFileError as e:
            raise ModelLoadError(str(e)) from None
        if not any(k.startswith(("decoder.", "first_stage_model.decoder.", "vae.decoder.")) for k in keys):
            raise ModelLoadError(f"{path.name}: not a VAE (no decoder.* weights); is it a checkpoint or a LoRA?")
    try:
        vae = AutoencoderKL.from_single_file(str(path), config=str(config_dir), subfolder="vae", local_files_only=True)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise ModelLoadError(f"{path.name}: does not fit this checkpoint's VAE ({type(e).__name__}: {reason})") from None
    if any(p.device.type == "meta" for p in vae.parameters()):
        raise ModelLoadError(f"{path.name}: weights missing for the VAE described by {config_dir}")
    return vae.eval()


class VaeSwap:
    """The VAE files loaded on this worker, the last one kept (swapping back and forth between two
    tasks' VAEs is common in a VAE sweep; one loaded extra VAE is cheap)."""

    def __init__(self):
        self._last: tuple[tuple[Path, int, int], object] | None = None

    def get(self, path: Path, config_dir: Path, allow_pickle: bool):
        st = Path(path).stat()
        stamp = (Path(path).resolve(), st.st_size, st.st_mtime_ns)
        if self._last is None or self._last[0] != stamp:
            self._last = (stamp, load_vae(path, config_dir, allow_pickle))
        return self._last[1]
