# Single entry point.  `make test` and `make demo` work on a fresh clone:
# they create .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test demo bench lint proto clean system-deps

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/pip install -q --no-deps openmined-psi==2.0.6
	touch $@

# The hub's PostgreSQL store is tested against a real server from Debian's
# packages (tests start their own cluster in a temporary folder).
system-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/mypy

test: system-deps lint
	$(BIN)/pytest -q

demo: $(VENV)/.installed-test
	$(BIN)/blindmatch demo

bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.bench_oprf
	$(BIN)/python -m benchmarks.identifier_eval
	$(BIN)/python -m benchmarks.bench_federation

proto: $(VENV)/.installed-test
	$(BIN)/python scripts/generate_proto.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
