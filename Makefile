# Two commands for a newcomer: `make demo` (the documented job on the built-in emulator)
# and `make test`. Both create .venv and install the project on first use.
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# Test processes: much of a test waits for servers, leases and CML runs, so four share two
# cores. They take groups (a file, or a file's SQLite or PostgreSQL half), the slowest first,
# in the order tests/conftest.py gives; its pytest_xdist_make_scheduler makes the groups
# (--dist loadgroup no longer works with pytest 9.2). Measured on 2 idle cores, fresh clones:
# 886 to 888 tests in 466 to 475 s (7.8 to 7.9 min); three or five processes were slower.
WORKERS ?= 4

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
	$(BIN)/pytest -n $(WORKERS) --dist loadfile --no-loadscope-reorder

# While editing: lint, types and the tests that need no server (under a minute).
check: lint
	$(BIN)/pytest -m "not server" -q -n 4 --dist loadfile

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
