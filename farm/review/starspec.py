"""The starred images' parameters as a new job spec that renders exactly them again.

The axes split into independent groups (the stars are the product of the groups); a group of
several axes becomes a zip group in `combine`. Values may repeat inside a zip group as long as
no combination does (farm/spec.py), and the starred combinations are distinct, so the spec renders
the stars and nothing else.
"""

from __future__ import annotations

from itertools import combinations
import yaml

from farm.samplers import display_name

# Spec keys in expansion order (outermost first), as farm/spec.py reads them.
AXES = (
    "checkpoint", "vae", "size", "sampler", "steps", "clip_skip", "cfg", "rng", "seed_resize_from",
    "variation_strength", "negative_prompt", "prompt", "variation_seed", "seed",
)
# Written only when some star uses them; each value here means "off", as in a spec without the key.
OPTIONAL = {"vae": "None", "rng": "cpu", "seed_resize_from": "0x0", "variation_strength": 0}


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def image_params(record: dict) -> dict:
    """What renders this image again, in spec terms (the prompts after any Prompt S/R and with
    their LoRA tags; a batch image's own seed and variation seed)."""
    task = record["task"]
    offset = record["seed"] - task["seed"]  # image i of a batch: seed + i, variation seed + i
    strength = task.get("subseed_strength", 0)
    return {
        "checkpoint": task["checkpoint"],
        "size": f"{task['width']}x{task['height']}",
        "sampler": display_name(task["sampler"], task["schedule"]),
        "steps": task["steps"],
        "clip_skip": task["clip_skip"],
        "cfg": _number(task["cfg"]),
        "negative_prompt": task["negative_prompt"],
        "prompt": task["prompt"],
        "seed": record["seed"],
        "vae": task.get("vae") or OPTIONAL["vae"],
        "rng": task.get("rng", OPTIONAL["rng"]),
        "seed_resize_from": f"{task.get('seed_resize_width', 0)}x{task.get('seed_resize_height', 0)}",
        "variation_strength": _number(strength),
        # with strength 0 the variation seed changes nothing; the image's seed stands in for it
        "variation_seed": task["subseed"] + offset if strength else record["seed"],
    }


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
    rows = [image_params(r) for r in records]
    rows = [dict(zip(AXES, t)) for t in _distinct([tuple(r[a] for a in AXES) for r in rows])]
    unused = {a for a, off in OPTIONAL.items() if all(r[a] == off for r in rows)}
    if "variation_strength" in unused:
        unused.add("variation_seed")
    fixed = [a for a in AXES if a not in unused and len({repr(r[a]) for r in rows}) == 1]
    swept = [a for a in AXES if a not in unused and a not in fixed]
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
    header = f"# {len(rows)} starred image(s) of {source}, exported by `farm review`.\n"
    return header + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=10_000), count

