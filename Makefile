# One entry point for users and CI. `make demo` and `make test` set everything up first.
#
# torch is installed BEFORE the package so pip never resolves `torch>=2.5` to the CUDA build on
# a CPU machine. Choose the build with TORCH_INDEX, e.g.
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu     (CPU wheel, ~200 MB)
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu126   (CUDA 12.6)
# Left empty, pip's configured indexes are used (here: a local CPU wheel of torch 2.13.0).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= dev
PYTEST_ARGS ?=

.PHONY: setup demo test bench bench-quick lint format clean golden

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || \
		$(PY) -m pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed-$(EXTRAS)

demo: setup
	$(VENV)/bin/hptransfer demo

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/run_all.py

bench-quick: setup
	$(PY) benchmarks/run_all.py --quick

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: setup
	$(VENV)/bin/ruff format src tests benchmarks

# Regenerate the golden losses after a change that is MEANT to alter the numbers.
golden: setup
	$(PY) tests/golden.py --write

clean:
	rm -rf $(VENV) hpt-results .pytest_cache
