# Newcomer entry points: `make demo` and `make test` (both run `make setup` first).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# CPU install path: the pinned CPU wheel. A GPU host overrides with its own build, e.g.
#   make setup TORCH_SPEC="torch"   (see README, "GPU hosts")
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup system-packages demo test test-fast bench clean

setup: system-packages $(STAMP)

# Prometheus and promtool (Debian package `prometheus`): a real server in the integration
# tests and the alert-rule checks. Installed when run as root and missing; otherwise one
# line says how (the tests that need them then skip, and fail under CI).
system-packages:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make setup: installing the Debian package prometheus (Prometheus + promtool, for the tests)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq prometheus >/dev/null; \
	  else \
	    echo "make setup: Prometheus/promtool missing; their tests will skip. Install: sudo apt-get install -y prometheus"; \
	  fi; \
	fi

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
