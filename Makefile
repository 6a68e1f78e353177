# tickpipe entry points. `make up` runs the pipeline, `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK := deploy/local/stack.sh
RUN := deploy/compose/run.sh
KIND := deploy/kind/kind.sh
# The live checks' engine, images and cluster (make test-deploy).
ENGINE := deploy/engines/docker.sh
IMAGES := deploy/images/build.sh
CLUSTER := deploy/cluster/cluster.sh
# Pinned tools outside the virtualenv (`make tools`): helm, built from its Go module.
HELM_VERSION := v3.22.0
TOOLS_BIN := $(CURDIR)/.tools/bin
HELM := $(TOOLS_BIN)/helm
PACKAGES := -e libs/common -e services/producer-stocks -e services/producer-crypto \
            -e services/consumer -e services/market-sim \
            -e tools/localstack -e tools/status

.PHONY: help venv tools up down ps logs psql kind-up kind-down cluster-up cluster-down test-cluster cluster-check test lint typecheck unit integration e2e stack-up stack-down bench bench-write-path bench-producer bench-consumer

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/.installed: constraints.txt requirements-dev.txt libs/common/pyproject.toml services/*/pyproject.toml tools/*/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/pip install --quiet -c constraints.txt $(PACKAGES) -r requirements-dev.txt
	touch $@

venv: $(BIN)/.installed ## create .venv with every package (editable) and the dev tools

tools: ## install pinned helm into .tools/bin (go install; skipped when that version is there)
	@if go version -m $(HELM) 2>/dev/null | grep -Eq '^[[:space:]]+mod[[:space:]]+helm\.sh/helm/v3[[:space:]]+$(HELM_VERSION)[[:space:]]'; then \
		echo "helm $(HELM_VERSION) is in .tools/bin"; \
	else \
		command -v go >/dev/null || { echo "make tools: Go is needed to build helm $(HELM_VERSION)" >&2; exit 1; }; \
		echo "building helm $(HELM_VERSION) into .tools/bin"; \
		GOBIN=$(TOOLS_BIN) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION); \
	fi

# up/down/ps/logs/psql: the compose stack when a Docker engine answers, else the local process
# stack (TICKPIPE_STACK=compose|local chooses); deploy/compose/run.sh decides and says which.
up: venv ## run the whole pipeline (simulator unless ALPACA_API_KEY is set) and say where things are
	@$(RUN) up

down: ## stop the pipeline and its services (data is kept)
	@$(RUN) down

ps: ## show what is running
	@$(RUN) ps

.PHONY: status
status: venv ## one-screen summary of the running pipeline (rates, lag, DLQ, newest tick per symbol); ARGS=--watch refreshes
	@$(BIN)/tickpipe status $(ARGS)

logs: ## follow the services' logs
	@$(RUN) logs

psql: ## psql on the pipeline's database (also reads SQL from standard input)
	@$(RUN) psql

kind-up: ## a kind cluster with Strimzi and the chart, images built and loaded; waits for ticks
	@$(KIND) up

kind-down: ## delete the kind cluster
	@$(KIND) down

cluster-up: ## a local single-node Kubernetes without kind or registries (as root; KUBECONFIG set: that cluster)
	@$(CLUSTER) up

cluster-down: ## delete the local cluster; the host's network and sysctls go back as they were
	@$(CLUSTER) down

# The chart on a real Kubernetes (tests/engines/test_chart_on_cluster.py): the images from
# deploy/images/build.sh on the project's Docker engine, loaded into the local cluster's node.
# A cluster this target started is deleted at the end, pass or fail (sysctls restored).
test-cluster: venv tools ## build the images, then install the chart on the local cluster (make cluster-up) and check it live
	$(ENGINE) start
	source <($(ENGINE) env); $(IMAGES) all
	@$(MAKE) --no-print-directory cluster-check

cluster-check: venv tools
	@started=false; $(CLUSTER) is-up || started=true; \
	$(CLUSTER) up || exit 1; \
	source <($(ENGINE) env); rc=0; \
	$(BIN)/pytest -m engines tests/engines/test_chart_on_cluster.py || rc=$$?; \
	if $$started; then $(CLUSTER) down || rc=1; fi; \
	exit $$rc

stack-up: venv ## start only Kafka and PostgreSQL (what the tests need)
	@$(STACK) start infra

stack-down: ## stop Kafka and PostgreSQL
	@$(STACK) stop infra

lint: venv ## ruff and mypy (strict)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy libs/common/src services/*/src tools/*/src tests bench deploy/cluster/*.py

test: venv tools stack-up lint ## every test: unit, integration, end to end, against the local stack
	set -a; source <($(STACK) env); set +a; $(BIN)/pytest

# The live checks on real engines (tests/engines, marker `engines`; plain pytest leaves them
# out): starts the project's Docker engine unless it answers already, builds the stand-in and
# service images (layer-cached), then runs them. CI runs it after `make test`.
.PHONY: test-deploy
test-deploy: venv tools ## live checks on real engines: images built and run hardened, compose up and down, the chart on the local Kubernetes
	$(ENGINE) start
	source <($(ENGINE) env); $(IMAGES) all
	source <($(ENGINE) env); $(BIN)/pytest -m engines tests/engines --ignore=tests/engines/test_chart_on_cluster.py
	@$(MAKE) --no-print-directory cluster-check

# Minutes-long fault runs at the shipped settings (marker `soak`; plain pytest leaves them out):
# Kafka away for three minutes at 3,000 ticks/s with the default queue. CI runs it too.
.PHONY: test-soak
test-soak: venv stack-up ## slow fault runs: three minutes without Kafka at the default queue, RSS within the chart's limit
	set -a; source <($(STACK) env); set +a; $(BIN)/pytest -m soak tests/e2e
	@cat .run/soak/kafka_outage.json

bench: bench-write-path bench-producer bench-consumer ## every benchmark mode

bench-write-path: venv stack-up ## the consumer's write step alone against hand-written alternatives
	set -a; source <($(STACK) env); set +a; $(BIN)/python bench/write_path.py

bench-producer: venv stack-up ## one producer process at firehose rates, this tree vs main (ARGS=... for bench/producer.py)
	set -a; source <($(STACK) env); set +a; $(BIN)/python bench/producer.py $(ARGS)

bench-consumer: venv stack-up ## the consumer end to end (Kafka → table) vs baselines and the COPY ceiling; ARGS=... for bench/drain.py
	set -a; source <($(STACK) env); set +a; $(BIN)/python bench/drain.py $(ARGS)

unit: venv ## unit tests only (no services needed)
	$(BIN)/pytest tests/unit
