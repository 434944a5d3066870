# Both entry points bootstrap .venv themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint format bench clean

$(BIN)/newsletter: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/newsletter
	$(BIN)/newsletter build issues/2024-11-25-biden-atacms-ukraine.md -o build
	$(BIN)/newsletter check issues/2024-11-25-biden-atacms-ukraine.md

test: $(BIN)/newsletter
	$(BIN)/ruff check newsletter tests bench
	$(BIN)/ruff format --check newsletter tests bench
	$(BIN)/pytest

lint: $(BIN)/newsletter
	$(BIN)/ruff check newsletter tests bench
	$(BIN)/ruff format --check newsletter tests bench

format: $(BIN)/newsletter
	$(BIN)/ruff format newsletter tests bench
	$(BIN)/ruff check --fix newsletter tests bench

bench: $(BIN)/newsletter
	$(BIN)/python bench/build_bench.py

clean:
	rm -rf build .pytest_cache
