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
# tests and the alert-rule checks. jemalloc (`libjemalloc2`): the trainer's allocator where
# installed ([daemon] allocator, README "Memory over weeks"). Installed when run as root and
# missing; otherwise one line says how (the tests that need them then skip, and fail under CI).
system-packages:
	@missing=""; \
	if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then missing=" prometheus"; fi; \
	if ! /sbin/ldconfig -p 2>/dev/null | grep -q libjemalloc.so.2; then missing="$$missing libjemalloc2"; fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make setup: installing the Debian packages$$missing (for the tests and the trainer)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "make setup: missing$$missing; their tests will skip. Install: sudo apt-get install -y$$missing"; \
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
