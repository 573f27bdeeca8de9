# ticketgate -- developer entry points. Needs only python3 and make; everything else goes
# into .venv (created on first use, refreshed when pyproject.toml changes).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
DEMO_CONFIG := var/demo/ticketgate.toml

.DEFAULT_GOAL := help
.PHONY: help venv demo test test-faults bench lint clean

help:
	@echo "make venv         create .venv and install ticketgate with its test extra"
	@echo "make demo         initialise the demo (var/demo/) and run it on 127.0.0.1"
	@echo "make test         the whole test suite"
	@echo "make test-faults  the long fault-injection tests (pytest -m faults)"
	@echo "make bench        run benchmarks/*.py"
	@echo "make lint         ruff check, ruff format --check, mypy --strict"
	@echo "make clean        remove .venv, var/ and caches"

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "'$(PYTHON) -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2; \
	  exit 1; }

# Reinstall only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

venv: $(STAMP)

demo: venv
	$(BIN)/ticketgate --config $(DEMO_CONFIG) init --demo
	@echo "ticketgate demo: SMTP 127.0.0.1:2525, outbox in var/demo/var/outbox/new/ (Ctrl-C stops)"
	exec $(BIN)/ticketgate --config $(DEMO_CONFIG) run

# Three workers on this 2-core machine: many tests wait on child processes, sockets and Dovecot,
# and a third worker fills that time (2026-12-03: 12.2 min against 15.8 with two). The tests that
# restart the machine's PostgreSQL run alone after.
test: venv
	$(BIN)/pytest -q -p no:cacheprovider -n 3 -m 'not faults and not serial'
	$(BIN)/pytest -q -p no:cacheprovider -m 'serial and not faults'

test-faults: venv
	$(BIN)/pytest -q -p no:cacheprovider -m faults

bench: venv
	@set -e; found=0; \
	for f in benchmarks/*.py; do \
	  [ -e "$$f" ] || continue; found=1; \
	  echo "== $$f"; $(BIN)/python "$$f"; \
	done; \
	[ "$$found" = 1 ] || echo "no benchmarks/*.py yet"

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	touch $@

lint: $(DEV_STAMP)
	$(BIN)/ruff check gateway store tests
	$(BIN)/ruff format --check gateway store tests
	$(BIN)/mypy --strict gateway store

clean:
	rm -rf $(VENV) var build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
