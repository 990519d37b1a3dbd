"""The one spec-YAML writer: `farm info --as-spec` and the star export both write specs with it."""

from __future__ import annotations

import yaml

# Read first in a written spec; the other keys follow in the order given, `combine` last.
_FIRST = ("version", "name", "prompt", "negative_prompt")


def write_spec(entries: dict, comments: list[str] = ()) -> str:
    """A job spec YAML: `# comment` lines, then the keys (spec key -> value or list of values)."""
    order = [k for k in _FIRST if k in entries] + [k for k in entries if k not in _FIRST and k != "combine"]
    if "combine" in entries:
        order.append("combine")
    body = yaml.safe_dump({k: entries[k] for k in order}, sort_keys=False, allow_unicode=True, width=10**6)
    return "".join(f"# {line}\n" for line in comments) + body
