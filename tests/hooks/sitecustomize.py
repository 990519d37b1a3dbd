"""Test-only, for real worker processes a test starts with this folder on PYTHONPATH:
FARM_TEST_TUNABLES='{"NAME": value, ...}' sets farm/tunables.py values before anything imports them,
so that paths bounded by minutes (a depot that does not answer) run in seconds."""

import json
import os

if os.environ.get("FARM_TEST_TUNABLES"):
    import farm.tunables

    for name, value in json.loads(os.environ["FARM_TEST_TUNABLES"]).items():
        assert hasattr(farm.tunables, name), name
        setattr(farm.tunables, name, tuple(value) if isinstance(value, list) else value)
