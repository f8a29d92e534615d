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
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: system-deps lint
	$(BIN)/pytest -q

demo: $(VENV)/.installed-test
	$(BIN)/blindmatch demo

# Every benchmark the README quotes, with its parameters (about an hour;
# the hub needs system-deps for its PostgreSQL rows).
bench: $(VENV)/.installed-bench system-deps
	$(BIN)/python -m benchmarks.bench_oprf
	$(BIN)/python -m benchmarks.identifier_eval
	$(BIN)/python -m benchmarks.bench_federation
	$(BIN)/python -m benchmarks.bench_audit
	$(BIN)/python -m benchmarks.bench_disclosure
	$(BIN)/python -m benchmarks.bench_hub_store
	$(BIN)/python -m benchmarks.bench_hub_load --tags 10000000 --json-out benchmarks/results/bench_hub_load_10m.json
	$(BIN)/python -m benchmarks.bench_grpc_floor
	$(BIN)/python -m benchmarks.federation

proto: $(VENV)/.installed-test
	$(BIN)/python scripts/generate_proto.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
