# fedtwin: two commands set everything up on a fresh machine (`make run`, `make test`).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=
RUN_ARGS ?=
ifndef LOCAL_RUN_ID
LOCAL_RUN_ID := demo-$(shell date +%Y%m%d-%H%M%S)
endif

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
	$(BIN)/fedtwin run --run-id $(LOCAL_RUN_ID) $(RUN_ARGS)
	@# the single-agent baseline with the same env-step budget, then the report that compares both
	$(BIN)/fedtwin baseline --run-id $(LOCAL_RUN_ID) $(RUN_ARGS) --no-progress > /dev/null
	$(BIN)/fedtwin report $(LOCAL_RUN_ID)

test: $(STAMP) tools  ## Run the whole test suite (unit, integration with real servers, manifests, local control plane)
	@# The control plane's build first; if it fails (no Go, no network) the suite still runs and the
	@# tests/cluster tests fail with the build's one-line error.
	-$(BIN)/python -m tests.cluster.build
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)  ## Unit tests only (no servers)
	$(BIN)/python -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff, and mypy with the pydantic plugin (settings in pyproject.toml)
	$(BIN)/ruff check fedtwin tests benchmarks workflows
	$(BIN)/mypy

bench: $(STAMP)  ## Run the benchmarks (see benchmarks/README.md)
	$(BIN)/python benchmarks/env_throughput.py
	$(BIN)/python benchmarks/time_to_solve.py
	$(BIN)/python benchmarks/store_writes.py

clean:  ## Remove local runs and caches (keeps .venv)
	rm -rf fedtwin-runs .pytest_cache .ruff_cache

# --- charts, image, single cluster (charts/, networks/, scripts/, Dockerfile) ---
.PHONY: tools charts chart-docs networks image single-cluster-setup single-cluster-teardown
IMAGE_REPOSITORY ?= fedtwin
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
DOCKER_BUILD_ARGS ?=

tools:  ## Install pinned helm and kubectl into .tools/bin (the chart tests need them)
	bash scripts/install-tools.sh

charts:  ## Copy workflows/rendered/*.yaml into the fedtwin chart (a test fails when the copies are stale)
	@ls workflows/rendered/*.yaml >/dev/null 2>&1 || { echo "charts: no workflows/rendered/*.yaml; run 'make workflows' first" >&2; exit 1; }
	rm -f charts/fedtwin/files/workflowtemplates/*.yaml
	cp workflows/rendered/*.yaml charts/fedtwin/files/workflowtemplates/

chart-docs: $(STAMP)  ## Regenerate the values tables of the chart READMEs from the `# --` comments
	$(BIN)/python scripts/chart_docs.py charts/fedtwin charts/fedtwin-platform

networks: $(STAMP) tools  ## Regenerate networks/ (standalone isolation manifests) from the fedtwin chart
	$(BIN)/python scripts/render_networks.py

image:  ## Build the container image (IMAGE_REPOSITORY:IMAGE_TAG; DOCKER_BUILD_ARGS for e.g. TORCH_SPEC)
	docker build $(DOCKER_BUILD_ARGS) -t $(IMAGE_REPOSITORY):$(IMAGE_TAG) .

single-cluster-setup: tools  ## kind cluster + image + Argo Workflows + fedtwin-platform + fedtwin, then how to submit
	IMAGE_REPOSITORY=$(IMAGE_REPOSITORY) IMAGE_TAG=$(IMAGE_TAG) DOCKER_BUILD_ARGS="$(DOCKER_BUILD_ARGS)" bash scripts/single-cluster-setup.sh

single-cluster-teardown:  ## Delete the kind cluster made by single-cluster-setup
	bash scripts/single-cluster-teardown.sh

# --- workflows: Argo WorkflowTemplates from their Hera source (see workflows/README.md) ---------
.PHONY: workflows
workflows: $(STAMP)  ## Render workflows/rendered/*.yaml and the README parameter tables from the Hera source
	$(BIN)/python -m workflows.render

# --- multi-cluster: kind host with Karmada + two members, one run through S3 (karmada/README.md) --
.PHONY: multi-cluster-setup multi-cluster-run multi-cluster-teardown karmada-manifests
RUN_ID ?= demo
ROUNDS ?= 10
MC_SETUP = IMAGE_REPOSITORY=$(IMAGE_REPOSITORY) IMAGE_TAG=$(IMAGE_TAG) DOCKER_BUILD_ARGS="$(DOCKER_BUILD_ARGS)" bash karmada/multi-cluster-setup.sh

multi-cluster-setup: tools  ## kind host (Karmada, Argo, S3, coordinator) + two joined members, policies applied; prints how to submit
	$(MC_SETUP) clusters
	$(MC_SETUP) karmada
	$(MC_SETUP) join
	$(MC_SETUP) platform
	$(MC_SETUP) policies
	$(MC_SETUP) print

multi-cluster-run:  ## Submit a multi-cluster run (RUN_ID=demo, ROUNDS=10) to the multi-cluster setup
	bash karmada/submit-run.sh $(RUN_ID) $(ROUNDS)

multi-cluster-teardown:  ## Delete the kind clusters and state made by multi-cluster-setup
	bash karmada/multi-cluster-teardown.sh

karmada-manifests: $(STAMP) tools  ## Regenerate karmada/manifests/ (standalone Karmada objects) from the fedtwin chart
	$(BIN)/python karmada/render_manifests.py

# --- local control plane: kube-apiserver, etcd and Argo built from source (tests/cluster/README.md) --
.PHONY: cluster-tools cluster-e2e

cluster-tools: $(STAMP)  ## Build kube-apiserver, etcd, workflow-controller and argo from source once (cached in ~/.cache/fedtwin-cluster)
	$(BIN)/python -m tests.cluster.build

cluster-e2e: $(STAMP) tools cluster-tools  ## Run the tests against the local control plane (real API server and Argo controller, node agent)
	$(BIN)/python -m pytest tests/cluster $(PYTEST_ARGS)
