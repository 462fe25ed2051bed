# CodingJob: run autonomous coding agents in sandboxed Kubernetes pods.
# `make help` lists the targets. Everything that is built from source (Kubernetes, etcd, MinIO,
# helm, the base image) is cached outside the repository in $(CODINGJOB_CACHE).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

export CODINGJOB_CACHE ?= $(HOME)/.cache/codingjob
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} \
		/^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } \
		/^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: deps
deps: ## Install the system packages the cluster, images and tests need (Debian/Ubuntu, root).
	hack/install-deps.sh

$(VENV)/.installed: pyproject.toml agent-image/pyproject.toml gateway/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	hack/heartbeat.sh "installing the Python packages" "about 3 min the first time" \
		$(PY) -m pip install -q -e '.[dev]' -e ./agent-image -e ./gateway
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Create the Python virtualenv with the operator, the agent, the gateway and dev tools.

.PHONY: lint
lint: venv ## Lint and type-check (ruff, mypy, import contracts).
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

.PHONY: fmt
fmt: venv ## Format the Python code.
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

.PHONY: crd
crd: venv ## Regenerate crds/codingjob.yaml and crds/codingjobclass.yaml from the pydantic models (a unit test checks them).
	$(PY) -m codingjob_operator.crd codingjob > crds/codingjob.yaml
	$(PY) -m codingjob_operator.crd codingjobclass > crds/codingjobclass.yaml

##@ Tests

.PHONY: test
test: lint test-unit bench-quick-local test-integration e2e-and-faults bench-quick-cluster ## Run every test: unit, quick benchmarks, integration (cluster, MinIO, images), e2e and the fault campaign.

.PHONY: test-unit
#: Processes for the unit tests: the million-file archive test holds one for minutes while the
#: other takes the rest.
UNIT_WORKERS ?= 2

test-unit: venv ## Unit tests: no network, no cluster (in parallel).
	$(PYTEST) --durations=10 -n $(UNIT_WORKERS) tests/unit

.PHONY: test-integration
test-integration: venv cluster-up images ## Integration tests on the local cluster, MinIO and the images (cluster tests in one process, the rest in another).
	$(PYTEST) --durations=15 -n 2 --dist loadgroup tests/integration

#: Processes for the e2e tests: they mostly wait on pods, so more than the cores pay off.
E2E_WORKERS ?= 4
# The chart is installed once per pytest session, before the first test (--shared-release). The
# e2e tests run in parallel (--dist loadgroup keeps a module with module fixtures on one worker);
# then, alone on the same install (KEEP, then REUSE), the disruptive ones: the failover test and,
# in `make test`, the fault campaign. Both sessions run even when the first fails.
E2E_PARALLEL = CODINGJOB_E2E_KEEP=1 $(PYTEST) --durations=15 --shared-release \
	-n $(E2E_WORKERS) --dist loadgroup -m "not disruptive" tests/e2e
E2E_ALONE = CODINGJOB_E2E_REUSE=1 $(PYTEST) --durations=15 --shared-release -m disruptive

.PHONY: e2e
e2e: venv cluster-up images ## End-to-end: the chart on the cluster, CodingJobs from apply to ZIP (tests in parallel).
	status=0; $(E2E_PARALLEL) || status=1; $(E2E_ALONE) tests/e2e || status=1; exit $$status

.PHONY: e2e-and-faults
e2e-and-faults: venv cluster-up images ## The e2e suite, then the fault campaign, on one chart install.
	status=0; $(E2E_PARALLEL) || status=1; $(E2E_ALONE) tests/e2e tests/faults || status=1; exit $$status

.PHONY: test-faults
test-faults: venv cluster-up images ## Fault campaign: evictions, OOM, operator/sidecar kills, MinIO outage... on running jobs (table in artifacts/faults/).
	$(PYTEST) tests/faults

.PHONY: mutation
mutation: venv ## Mutation score of the pure modules (mutmut 3; hours, not part of CI). MUTATION_MODULES="names ..." to pick, MUTATION_SAMPLE=N to draw N per module.
	hack/mutation.sh

##@ Cluster

.PHONY: cluster-up
cluster-up: ## Start the local single-node Kubernetes (or use $$KUBECONFIG when set).
	hack/cluster/up.sh

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and remove its state (the binary cache stays).
	hack/cluster/down.sh

.PHONY: cluster-status
cluster-status: ## Show what of the local cluster is running.
	hack/cluster/status.sh

.PHONY: images
images: ## Build the base, agent and operator images and load them into the cluster.
	hack/images.sh

.PHONY: tools
tools: ## Build (once; then cached) Kubernetes, etcd, CoreDNS, pause, helm, MinIO, kube-router from source.
	hack/cluster/build.sh all

##@ Benchmarks

# Every bench-X passes $(BENCH_ARGS) to its script, and every script accepts --quick: the same code
# with a small N, printing its ratios and asserting none. `make test` runs them all that way
# (bench-quick), so a benchmark that breaks fails CI. Add a new bench target to BENCH_LOCAL when it
# needs no cluster, to BENCH_CLUSTER when it does (a unit test checks that every one is listed).
BENCH_ARGS ?=
BENCH_LOCAL := bench-agent bench-context bench-archive bench-relay
BENCH_CLUSTER := bench-operator bench-gateway

.PHONY: bench-agent
bench-agent: venv ## Agent overhead per step without the model, vs a bare `bash -c true`.
	$(PY) agent-image/benchmarks/bench_agent.py $(BENCH_ARGS)

.PHONY: bench-operator
bench-operator: venv cluster-up ## 200 CodingJobs vs 200 Jobs at once: create-to-pod p50/p99 ratio, operator memory.
	KUBECONFIG=$${KUBECONFIG:-$${CODINGJOB_CLUSTER_DIR:-/var/lib/codingjob-cluster}/kubeconfig} $(PY) bench/operator/bench_operator.py $(BENCH_ARGS)

.PHONY: bench-gateway
bench-gateway: venv cluster-up ## 200 clients: status reads and SSE fan-out through one gateway vs the API server directly; p50/p99, RSS.
	KUBECONFIG=$${KUBECONFIG:-$${CODINGJOB_CLUSTER_DIR:-/var/lib/codingjob-cluster}/kubeconfig} $(PY) bench/gateway/bench_gateway.py $(BENCH_ARGS)

.PHONY: bench-archive
bench-archive: venv ## 1 GiB / 20,000-file workspace: archiver streaming to MinIO vs `zip -r` + upload; ratio, peak memory.
	nice $(PY) bench/archive/run.py $(BENCH_ARGS)

.PHONY: bench-relay
bench-relay: venv ## Model relay vs the scripted model directly: p50/p99 at 1 and 50 streams, overhead, relay RSS.
	nice $(PY) bench/relay/bench_relay.py $(BENCH_ARGS)

.PHONY: bench-context
bench-context: venv ## Sidecar at 1M tokens: 1 KiB append vs full re-count, prune time, resident memory.
	nice $(PY) bench/context/bench_context.py $(BENCH_ARGS)

.PHONY: bench-quick
bench-quick: bench-quick-local bench-quick-cluster ## Every benchmark in its quick mode (small N, same code; `make test` runs it).

.PHONY: bench-quick-local
bench-quick-local: venv ## The benchmarks that need no cluster, in their quick mode.
	for target in $(BENCH_LOCAL); do \
	  echo "== $$target (quick)"; $(MAKE) --no-print-directory "$$target" BENCH_ARGS=--quick; \
	done

.PHONY: bench-quick-cluster
bench-quick-cluster: venv cluster-up ## The benchmarks that need the cluster, in their quick mode.
	for target in $(BENCH_CLUSTER); do \
	  echo "== $$target (quick)"; $(MAKE) --no-print-directory "$$target" BENCH_ARGS=--quick; \
	done

##@ Chart

.PHONY: chart-sync
chart-sync: ## Copy crds/codingjob*.yaml into the chart's crds/ (one source for the CRDs).
	hack/chart-sync.sh

.PHONY: chart-lint
chart-lint: chart-sync ## helm lint the chart with the default values and every ci/ values file.
	helm="$$(hack/cluster/build.sh helm)"; chart=charts/codingjob-operator; \
	"$$helm" lint --strict --kube-version 1.34.0 "$$chart"; \
	for f in "$$chart"/ci/*.yaml; do "$$helm" lint --strict --kube-version 1.34.0 "$$chart" -f "$$f"; done

##@ Demo

.PHONY: demo
demo: ## The main job in one command: cluster, images, chart, todo-app CodingJob, downloaded ZIP.
	hack/demo.sh
