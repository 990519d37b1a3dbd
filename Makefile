# The two set-up commands of the README. Both create .venv on first use.
#   make demo   render the built-in demo sweep locally (tiny model, no servers) into outputs/
#   make test   run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned to the CPU build that pip finds on this project's machines; GPU users install
# their CUDA build first (README) and pip keeps it. constraints/no-deps.txt: spandrel without the
# torchvision it declares (it would bring another torch).
$(VENV)/.installed: pyproject.toml constraints/no-deps.txt | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0 -e '.[worker,test]'
	$(BIN)/pip install --quiet --no-deps -r constraints/no-deps.txt
	touch $@

demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/farm run

# 4 test processes on 2 cores: the end-to-end tests spend much of their time waiting on workers
# and servers, so 4 processes keep both cores busy (about 7 minutes on a 2-core machine).
test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 4

# Benchmarks (docs/BENCHMARKS.md): each prints one JSON line. Needs redis-server.
bench: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/scaling.py
	$(BIN)/python benchmarks/loads.py
	$(BIN)/python benchmarks/enqueue.py
	$(BIN)/python benchmarks/overlap.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/hires.py
	$(BIN)/python benchmarks/mixed.py
