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

$(VENV)/.installed: pyproject.toml agent-image/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' -e ./agent-image
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Create the Python virtualenv with the operator, the agent and dev tools.

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

##@ Tests

.PHONY: test
test: lint test-unit test-integration e2e ## Run every test: unit, integration (cluster, MinIO, images) and e2e.

.PHONY: test-unit
test-unit: venv ## Unit tests: no network, no cluster.
	$(PYTEST) tests/unit

.PHONY: test-integration
test-integration: venv cluster-up images ## Integration tests on the local cluster, MinIO and the images.
	$(PYTEST) tests/integration

.PHONY: e2e
e2e: venv cluster-up images ## End-to-end: the chart on the cluster, a CodingJob from apply to ZIP.
	$(PYTEST) tests/e2e

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

##@ Benchmarks

##@ Demo
