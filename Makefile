# `make demo` and `make test` each bootstrap .venv by themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean kcat conformance

# The C extensions are built by the editable install: a changed .c file installs again.
$(STAMP): pyproject.toml setup.py $(wildcard streamhouse/*/*.c streamhouse/*/*/*.c)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/streamhouse --data-dir ./streamhouse-data demo

lint: $(STAMP)
	$(BIN)/ruff check streamhouse tests benchmarks
	$(BIN)/ruff format --check streamhouse tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format streamhouse tests benchmarks
	$(BIN)/ruff check --fix streamhouse tests benchmarks

# Two workers, a test file each at a time (module fixtures such as one `serve` per file stay
# whole): most tests wait on servers and clients, so the suite takes about half the time.
test: $(STAMP) lint kcat
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# kcat, a real Kafka client the protocol tests drive, comes from Debian's packages.
kcat:
	@command -v kcat >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq kcat) >/dev/null 2>&1 || \
		(command -v sudo >/dev/null && sudo apt-get update -qq && sudo apt-get install -y -qq kcat) >/dev/null 2>&1 || \
		echo "kcat is missing: install it with apt-get install kcat" >&2

# librdkafka's own test suite against `serve` (about 45 minutes; not part of `make test`):
# fetched with `apt-get source librdkafka`, built under build/conformance, results in
# benchmarks/results/conformance_librdkafka.md. Selection: benchmarks/conformance/selection.toml.
conformance: $(STAMP)
	$(BIN)/python -m benchmarks.conformance.librdkafka

bench: $(STAMP)
	$(BIN)/python benchmarks/log_bench.py

clean:
	rm -rf $(VENV) streamhouse-data .pytest_cache
