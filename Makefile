# Two entry points, each doing all of its own set-up on a fresh machine:
#   make demo   - creates .venv, installs Stoic, runs the billing demo on SQLite with the API and
#                 dashboard on http://127.0.0.1:8000 until Ctrl-C (DEMO_ARGS="--duration 30" to stop on its own)
#   make test   - creates .venv, installs Stoic with its test tools, runs every test
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stoic demo $(DEMO_ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench: $(STAMP)
	$(VENV)/bin/python -m bench.all

clean:
	rm -rf $(VENV) stoic-demo.db stoic-demo.db-wal stoic-demo.db-shm
