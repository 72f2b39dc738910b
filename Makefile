# The two commands of README.md: `make run` (install, start Tessera, run the demo against it)
# and `make test` (install, run every check and the whole test suite). Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install protos bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[all]'
	$(BIN)/python -m tessera.server.warm  # Numba's cache: the first start does not compile
	touch $@

install: $(BIN)/.installed

run: $(BIN)/.installed
	$(BIN)/tessera serve --demo

test: $(BIN)/.installed
	$(BIN)/python scripts/gen_protos.py --check
	$(BIN)/ruff check .
	./scripts/typecheck.sh
	$(BIN)/pytest -n auto

protos: $(BIN)/.installed
	$(BIN)/python scripts/gen_protos.py

# The online benchmark drives the server with h2load (C) when it is installed; it falls back to
# a Python load generator otherwise and says so in its report.
bench: $(BIN)/.installed
	command -v h2load >/dev/null || (apt-get install -y nghttp2-client || \
	  (apt-get update && apt-get install -y nghttp2-client)) || echo "no h2load: Python load generator"
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.ingest_bench
	$(BIN)/python -m benchmarks.aggregation_bench
	$(BIN)/python -m benchmarks.scaling_bench
	$(BIN)/python -m benchmarks.rest_bench
