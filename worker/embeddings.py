"""Textual-inversion embeddings, used by writing their file stem in the prompt or negative prompt.

Only the embeddings a task names are loaded, as new tokens of the tokenizer(s), and unloaded after
the task. Layouts read (as A1111's modules/textual_inversion/textual_inversion.py reads them):
- A1111 `.pt`/`.bin`: `{"string_to_param": {"*": tensor}}` (pickled: only with pickles allowed,
  weights-only);
- `.safetensors` with one tensor (usually `emb_params`), or a diffusers `{token: tensor}` file;
- SDXL `.safetensors` with `clip_l` (first encoder) and `clip_g` (second encoder).
"""

from __future__ import annotations

from pathlib import Path

import torch

from farm.families import FAMILIES
from farm.model_files import ModelFileError, read_safetensors_header
from farm.depot import words_in
from farm.models import Registry
from worker.families import of_pipeline
from worker.safe_load import ModelLoadError, is_pickle, load_pickle, refuse_pickle


def used_embeddings(registry: Registry, texts: list[str]) -> dict[str, Path]:
    """name -> file for every embedding whose name appears as a word in one of the texts."""
    files = registry.files("embedding")
    return {name: files[name].path for name in words_in(files, texts)}  # A1111 uses the bare stem as the token


def read_embedding(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """{"clip_l": vectors} for SD1.5 files, {"clip_l", "clip_g"} for SDXL ones; vectors (n, dim)."""
    if is_pickle(path):
        if not allow_pickle:
            raise refuse_pickle(path, "embedding")
        data = load_pickle(path)
    else:
        from safetensors.torch import load_file

        try:
            read_safetensors_header(path)
            data = load_file(str(path))
        except ModelFileError as e:
            raise ModelLoadError(str(e)) from None
        except Exception as e:
            raise ModelLoadError(f"{path.name}: cannot read the embedding ({(str(e).splitlines() or [''])[0][:200]})") from None
    if "clip_l" in data and "clip_g" in data:
        return {"clip_l": data["clip_l"], "clip_g": data["clip_g"]}
    if isinstance(data.get("string_to_param"), dict) and len(data["string_to_param"]) == 1:
        (vectors,) = data["string_to_param"].values()
    else:
        tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise ModelLoadError(f"{path.name}: not a textual-inversion embedding (expected one tensor, found {len(tensors)})")
        vectors = tensors[0]
    return {"clip_l": vectors}


def load_embeddings(pipe, used: dict[str, Path], allow_pickle: bool = False) -> None:
    """Add each embedding as a token (multi-vector ones as tok, tok_1 ...).
    On an error the caller removes what was added (unload_embeddings; worker/prepare.py does)."""
    family = of_pipeline(pipe)
    for name, path in used.items():
        parts = read_embedding(path, allow_pickle)
        if set(parts) != set(family.facts.embedding_parts):
            # (families built from parts have no textual-inversion embeddings)
            owner = next((f.name for f in FAMILIES if f.config_folder and not f.parts
                          and set(f.embedding_parts) == set(parts)), None)
            kind = f"an {owner}" if owner else "another family's"
            raise ModelLoadError(f"{path.name}: {kind} embedding cannot be used with an {family.name} checkpoint")
        for part, encoder, tokenizer in family.embedding_targets(pipe):
            vectors = parts[part].reshape(-1, parts[part].shape[-1])
            width = encoder.get_input_embeddings().weight.shape[1]
            if vectors.shape[1] != width:
                raise ModelLoadError(
                    f"{path.name}: embedding width {vectors.shape[1]} does not fit the text encoder ({width}); "
                    "it was made for another model family"
                )
            try:
                pipe.load_textual_inversion(vectors, token=name, text_encoder=encoder, tokenizer=tokenizer)
            except ValueError as e:  # e.g. the name is already a word of the vocabulary
                raise ModelLoadError(f"{path.name}: cannot use this embedding ({(str(e).splitlines() or [''])[0][:200]})") from None


def unload_embeddings(pipe) -> None:
    """Remove every added token: the tokenizers and encoders are back to the checkpoint's."""
    for tokenizer, encoder in of_pipeline(pipe).text_encoders(pipe):
        if len(tokenizer) > tokenizer.vocab_size:
            pipe.unload_textual_inversion(tokenizer=tokenizer, text_encoder=encoder)
