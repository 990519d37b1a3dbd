"""The starred images' parameters as a new job spec that renders exactly them again.

The axes split into independent groups (the stars are the product of the groups); a group of
several axes becomes a zip group in `combine`. Values may repeat inside a zip group as long as
no combination does (farm/spec/nodes.py, check_repeats), and the starred combinations are
distinct, so the spec renders the stars and nothing else.
"""

from __future__ import annotations

from itertools import combinations

from farm.params import BY_KEY, OPTIONAL_AXES, at_default, star_values
from farm.spec.write import write_spec
from farm.upscale import UPSCALE_AXES


def image_params(record: dict) -> dict:
    """What renders this image again, in spec terms (the prompts after any Prompt S/R and with
    their LoRA tags; a batch image's own seed and variation seed): each parameter's row in
    farm/params.py says how."""
    return star_values(record["task"], record["seed"])


def _distinct(rows: list[tuple]) -> list[tuple]:
    return list(dict.fromkeys(rows))


def _project(rows: list[dict], axes: list[str]) -> list[tuple]:
    return _distinct([tuple(r[a] for a in axes) for r in rows])


def factor_groups(rows: list[dict], axes: list[str]) -> list[list[str]]:
    """The finest split of axes into groups whose product is exactly the set of rows."""
    groups = []
    remaining = list(axes)
    while remaining:
        first, rest = remaining[0], remaining[1:]
        whole = len(_project(rows, remaining))
        group = next(
            [first, *combo]
            for size in range(len(rest) + 1)
            for combo in combinations(rest, size)
            if len(_project(rows, [first, *combo])) * len(_project(rows, [a for a in remaining if a not in combo and a != first])) == whole
        )
        groups.append(group)
        remaining = [a for a in remaining if a not in group]
    return groups


def starred_spec(name: str, records: list[dict], source: str) -> tuple[str, int]:
    """(spec YAML, how many images it renders) for the starred records of a job."""
    if not records:
        raise ValueError("no starred images: star some first")
    axes = list(image_params(records[0]))
    # an optional parameter no star uses stays out, as in a spec without the key
    unused = {a for a in OPTIONAL_AXES if all(at_default(BY_KEY[a], r["task"]) for r in records)}
    if "variation_strength" in unused:  # without a strength the variation seed changes nothing
        unused.add("variation_seed")
    if records[0]["task"].get("kind") == "upscale":  # A1111's Extras: no prompt, checkpoint or seed
        unused |= {a for a in axes if a not in UPSCALE_AXES}
    rows = [image_params(r) for r in records]
    rows = [dict(zip(axes, t)) for t in _distinct([tuple(r[a] for a in axes) for r in rows])]
    fixed = [a for a in axes if a not in unused and len({repr(r[a]) for r in rows}) == 1]
    swept = [a for a in axes if a not in unused and a not in fixed]
    spec: dict = {"version": 1, "name": f"{name}-stars"}
    spec.update({a: rows[0][a] for a in fixed})
    terms, count = [], 1
    for group in factor_groups(rows, swept):
        combos = _project(rows, group)
        for i, axis in enumerate(group):
            spec[axis] = [c[i] for c in combos]
        terms.append(group[0] if len(group) == 1 else "(" + ", ".join(group) + ")")
        count *= len(combos)
    if terms:
        spec["combine"] = " * ".join(terms)
    header = f"{len(rows)} starred image(s) of {source}, exported by `farm review`."
    return write_spec(spec, [header]), count

