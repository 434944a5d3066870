# Both entry points bootstrap .venv themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAMPLE_ISSUE := issues/2024-11-25-motivated-biden-authorize-ukraines-use-atacms.md

.PHONY: demo test lint format bench clean

$(BIN)/newsletter: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/newsletter
	$(BIN)/newsletter build $(SAMPLE_ISSUE) -o build
	$(BIN)/newsletter check $(SAMPLE_ISSUE)

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
