# Newcomer entry points: `make demo` and `make test` (both run `make setup` first).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# CPU install path: the pinned CPU wheel. A GPU host overrides with its own build, e.g.
#   make setup TORCH_SPEC="torch"   (see README, "GPU hosts")
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/inttower demo

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python -m bench.reproduce_paper

clean:
	rm -rf $(VENV) runs .pytest_cache
