# `make demo` and `make test` each bootstrap .venv by themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml
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

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/log_bench.py

clean:
	rm -rf $(VENV) streamhouse-data .pytest_cache
