# fedtwin: two commands set everything up on a fresh machine (`make run`, `make test`).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=
RUN_ARGS ?=

.PHONY: help install run test test-fast lint bench clean

help:  ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-24s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## Create .venv and install fedtwin with all extras and dev tools

run: $(STAMP)  ## Train the default fleet locally, evaluate on held-out twins, write the report
	$(BIN)/fedtwin run $(RUN_ARGS)

test: $(STAMP)  ## Run the whole test suite (unit, integration with real servers, manifests)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)  ## Unit tests only (no servers)
	$(BIN)/python -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check fedtwin tests benchmarks workflows

bench: $(STAMP)  ## Run the benchmarks (see benchmarks/README.md)
	$(BIN)/python benchmarks/env_throughput.py
	$(BIN)/python benchmarks/time_to_solve.py

clean:  ## Remove local runs and caches (keeps .venv)
	rm -rf fedtwin-runs .pytest_cache .ruff_cache
