# Two commands for a newcomer: `make demo` (the documented job on the built-in emulator)
# and `make test`. Both create .venv and install the project on first use.
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# Test processes: much of a test waits for servers, leases and CML runs, so three share two cores
# (882 tests in 20.8 min on 2 cores; two processes took longer).
WORKERS ?= 3

.PHONY: demo ui test check lint

$(INSTALLED): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/cml-jobs demo

ui: $(INSTALLED)
	$(BIN)/cml-jobs demo --ui

# The whole suite: every scenario, on SQLite and PostgreSQL Prefect servers and in Chromium.
test: $(INSTALLED)
	$(BIN)/pytest -n $(WORKERS) --dist loadfile

# While editing: lint, types and the tests that need no server (under a minute).
check: lint
	$(BIN)/pytest -m "not server" -q -n 4 --dist loadfile

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
