# Both entry points bootstrap .venv themselves on a fresh machine.
SHELL := bash
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

DEMO_PORT ?= 2525
# The demo keeps its list, ledger and captured mail under build/, fresh each run.
DEMO_ENV := NEWSLETTER_DATABASE_URL=sqlite:///build/demo.db NEWSLETTER_SMTP_PORT=$(DEMO_PORT)

# The main job end to end on embedded defaults: check and build the sample issue,
# start the capture SMTP server, import the sample list, send the issue to it.
demo: $(BIN)/newsletter
	$(BIN)/newsletter check $(SAMPLE_ISSUE)
	$(BIN)/newsletter build $(SAMPLE_ISSUE) -o build
	rm -rf build/demo.db build/demo.db-wal build/demo.db-shm build/outbox
	$(DEMO_ENV) $(BIN)/newsletter subscribers import subscribers.csv
	@set -e; \
	$(BIN)/newsletter smtpd --port $(DEMO_PORT) --dir build/outbox & smtpd=$$!; \
	trap 'kill $$smtpd 2>/dev/null; wait $$smtpd 2>/dev/null' EXIT; \
	for i in $$(seq 100); do (echo > /dev/tcp/127.0.0.1/$(DEMO_PORT)) 2>/dev/null && break; sleep 0.1; done; \
	$(DEMO_ENV) $(BIN)/newsletter send $(SAMPLE_ISSUE) --all --yes; \
	echo "messages captured in build/outbox/: $$(ls build/outbox/*.eml | wc -l) .eml files (open one in a mail client,"; \
	echo "or look at them with: $(BIN)/newsletter preview --outbox build/outbox)"; \
	$(DEMO_ENV) $(BIN)/newsletter status

test: $(BIN)/newsletter
	$(BIN)/ruff check newsletter tests bench
	$(BIN)/ruff format --check newsletter tests bench
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(BIN)/newsletter
	$(BIN)/ruff check newsletter tests bench
	$(BIN)/ruff format --check newsletter tests bench
	$(BIN)/mypy

format: $(BIN)/newsletter
	$(BIN)/ruff format newsletter tests bench
	$(BIN)/ruff check --fix newsletter tests bench

bench: $(BIN)/newsletter
	$(BIN)/python bench/build_bench.py

clean:
	rm -rf build outbox newsletter.db newsletter.db-wal newsletter.db-shm .pytest_cache
