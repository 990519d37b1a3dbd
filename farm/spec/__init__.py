"""Job spec v1: load a job YAML, validate it, and hold the result as a JobSpec.

The package, one idea a module: nodes (YAML nodes and located errors), axes (axis value readers),
models (models-folder checks; the families are farm/families.py), combine (the `combine` mini-language and
`grid`), parse (the parser, driven by the parameter table farm/params.py), jobspec (JobSpec and the
job id) and write (the one spec-YAML writer).
"""

from farm.params import ALIASES, AXIS_ORDER, DEFAULTS, NO_MODEL
from farm.spec.axes import MAX_MATRIX_PARTS, RNG_SOURCES, PromptMatrix
from farm.spec.jobspec import DEFAULT_FILENAME, SPEC_VERSION, JobSpec
from farm.spec.nodes import SpecError
from farm.spec.parse import OTHER_KEYS, REQUIRED, load_spec, parse_spec
from farm.spec.write import write_spec

__all__ = [
    "ALIASES", "AXIS_ORDER", "DEFAULTS", "DEFAULT_FILENAME", "MAX_MATRIX_PARTS", "NO_MODEL",
    "OTHER_KEYS", "REQUIRED", "RNG_SOURCES", "SPEC_VERSION", "JobSpec", "PromptMatrix", "SpecError",
    "load_spec", "parse_spec", "write_spec",
]
