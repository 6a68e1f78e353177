# tickpipe entry points. `make up` runs the pipeline, `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK := deploy/local/stack.sh
PACKAGES := -e libs/common -e services/producer-stocks -e services/producer-crypto \
            -e services/consumer -e services/market-sim

.PHONY: help venv up down ps logs psql test lint typecheck unit integration e2e stack-up stack-down bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/.installed: constraints.txt requirements-dev.txt libs/common/pyproject.toml services/*/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/pip install --quiet -c constraints.txt $(PACKAGES) -r requirements-dev.txt
	touch $@

venv: $(BIN)/.installed ## create .venv with every package (editable) and the dev tools

up: venv ## run the whole pipeline (simulator unless ALPACA_API_KEY is set) and say where things are
	@$(STACK) up

down: ## stop the pipeline and its local services
	@$(STACK) down

ps: ## show what is running
	@$(STACK) status

logs: ## follow the services' logs
	@$(STACK) logs

psql: ## psql on the pipeline's database (also reads SQL from standard input)
	@$(STACK) psql

stack-up: venv ## start only Kafka and PostgreSQL (what the tests need)
	@$(STACK) start infra

stack-down: ## stop Kafka and PostgreSQL
	@$(STACK) stop infra

lint: venv ## ruff and mypy (strict)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy libs/common/src services/*/src tests bench

test: venv stack-up lint ## every test: unit, integration, end to end, against the local stack
	set -a; source <($(STACK) env); set +a; $(BIN)/pytest

bench: venv stack-up ## benchmark the consumer's write path against hand-written alternatives
	set -a; source <($(STACK) env); set +a; $(BIN)/python bench/write_path.py

unit: venv ## unit tests only (no services needed)
	$(BIN)/pytest tests/unit
