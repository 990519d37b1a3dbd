"""Write constraints/worker.txt: the exact versions of everything `seedfarm[worker]` installs, as
the environment running this script has them (run it with the venv the test suite passed in).

    python scripts/lock_worker.py            # rewrite constraints/worker.txt
    python scripts/lock_worker.py --check    # exit 1 if the file is not what it would write

A worker install then reproduces that set on any PC:

    pip install -c constraints/worker.txt 'seedfarm[worker]'

torch is pinned by version only (`torch==2.13.0`): a CUDA build (`2.13.0+cu128`) satisfies it, so
the pin never swaps a GPU build for a CPU one. Dependencies that only another platform installs
(e.g. colorama on Windows) are not pinned: the file is written on Linux.
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "constraints" / "worker.txt"
HEADER = """\
# The exact set of packages `seedfarm[worker]` ran its test suite with (Linux, Python 3.11).
# Written by scripts/lock_worker.py; tests/test_packaging.py checks it against pyproject.toml.
# Use: pip install -c constraints/worker.txt 'seedfarm[worker]'   (uv: --constraint / -c)
"""


def wanted(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    env = default_environment()
    return any(req.marker.evaluate({**env, "extra": e}) for e in extras or {""})


def closure(roots: list[Requirement]) -> dict[str, str]:
    """name -> installed version, for the roots and everything they require here."""
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(r, set(r.extras)) for r in roots]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        dist = metadata.distribution(req.name)
        key = (name, frozenset(extras))
        if key in seen:
            continue
        seen.add(key)
        found[name] = dist.version
        for line in dist.requires or []:
            sub = Requirement(line)
            if wanted(sub, extras):
                todo.append((sub, set(sub.extras)))
    return found


def constraints() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    roots = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["worker"]]
    pins = closure(roots)
    lines = [f"{name}=={version.split('+')[0]}" for name, version in sorted(pins.items())]
    return HEADER + "\n".join(lines) + "\n"


def main() -> int:
    text = constraints()
    if "--check" in sys.argv:
        if OUT.read_text() != text:
            print(f"{OUT} is not what scripts/lock_worker.py writes from this environment", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({text.count(chr(10)) - HEADER.count(chr(10))} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
