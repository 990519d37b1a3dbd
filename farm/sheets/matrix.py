"""A1111's prompt-matrix layout: the first half of the `|` parts on columns, the rest on rows,
each label listing the parts of its half with the absent ones struck through."""

from __future__ import annotations

from farm.spec import JobSpec, PromptMatrix

MATRIX_AXES = ("matrix_x", "matrix_y")  # derived from the prompt in a prompt-matrix job


def matrix_prompt(spec: JobSpec | None) -> str | None:
    """The `base|a|b` prompt of a parsed spec with `prompt_matrix: true` and one prompt, else None."""
    if spec is None:
        return None
    prompt = spec.values["prompt"]  # a PromptMatrix only for one prompt of a matrix job
    return prompt.prompt if isinstance(prompt, PromptMatrix) and prompt.parts else None


def matrix_halves(prompt: str) -> tuple[list[str], list[str]]:
    """The parts on columns and the parts on rows (A1111: ceil(n / 2) parts across)."""
    parts = PromptMatrix(prompt).parts
    half = (len(parts) + 1) // 2
    return parts[:half], parts[half:]


def matrix_records(records: list[dict], prompt: str) -> list[dict] | None:
    """Records with the prompt axis replaced by A1111's matrix axes: matrix_x holds the active
    parts of the first half (columns), matrix_y those of the second (rows). None when a record's
    prompt is not one of the matrix's prompts."""
    matrix = PromptMatrix(prompt)
    combination = {matrix[i]: i for i in range(len(matrix))}
    across, down = matrix_halves(prompt)
    out = []
    for record in records:
        i = combination.get(record["axes"].get("prompt"))
        if i is None:
            return None
        active = [p for n, p in enumerate(matrix.parts) if i >> n & 1]
        axes = {k: v for k, v in record["axes"].items() if k != "prompt"}
        axes["matrix_x"] = [p for p in across if p in active]
        axes["matrix_y"] = [p for p in down if p in active]
        out.append({**record, "axes": axes})
    return out


def matrix_label(parts: list[str], active: list[str]) -> list[tuple[str, bool]]:
    """A1111's matrix label: every part of the half, the absent ones struck through."""
    return [(part, part in active) for part in parts]
