# One entry point for users and CI. `make demo` and `make test` set everything up first.
#
# torch is installed BEFORE the package so pip never resolves `torch>=2.5` to the CUDA build on
# a CPU machine (scripts/install_torch.sh). With TORCH_INDEX empty: on a machine without an
# NVIDIA GPU the CPU wheel index (falling back to pip's configured index when that cannot be
# reached, and failing rather than installing CUDA packages); with a GPU pip's configured index
# (the CUDA build on PyPI). TORCH_INDEX forces either, e.g.
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu     (CPU wheel, ~200 MB)
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu126   (CUDA 12.6)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= dev
PYTEST_ARGS ?=

.PHONY: setup demo test bench bench-quick lint typecheck format clean golden

# one stamp per set of extras; "none" is the package alone (what the demo needs). The dev extra
# also gets microsoft/mup (tests/param/test_mup_compare.py) without its dependencies, which
# would pull torchvision and with it another torch build; it needs only torch and pyyaml
$(VENV)/.installed-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || \
		scripts/install_torch.sh $(PY) "$(TORCH_SPEC)" "$(TORCH_INDEX)"
	$(PY) -m pip install -e "$(if $(filter none,$*),.,.[$*])"
	$(if $(findstring dev,$*),$(PY) -m pip install --no-deps "mup==1.0.0" pyyaml)
	touch $@

setup: $(VENV)/.installed-$(or $(EXTRAS),none)

demo: $(VENV)/.installed-none
	$(VENV)/bin/hptransfer demo

# the suite on every core: pytest-xdist with one worker per physical core (-n auto; conftest.py
# gives each one torch thread), one test file at a time per worker (--dist loadfile: a file's
# module fixtures are built once, its tests run in order). PYTEST_ARGS="-n 0" runs it serially
# in one process; PYTEST_XDIST_AUTO_NUM_WORKERS=N sets the number of workers.
test: setup
	$(PY) -m pytest -q -n auto --dist loadfile $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/run_all.py

bench-quick: setup
	$(PY) benchmarks/run_all.py --quick

lint: setup typecheck
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# mypy over src/hptransfer ([tool.mypy] in pyproject.toml: strict on config, param/, optim/);
# offline, cached in .mypy_cache (about 50 s cold, a few seconds warm on 2 cores)
typecheck: setup
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format src tests benchmarks

# Regenerate the golden losses after a change that is MEANT to alter the numbers.
golden: setup
	$(PY) tests/golden.py --write

clean:
	rm -rf $(VENV) hpt-results .pytest_cache .mypy_cache
