# dagwire developer entry points. `make test` and `make run` install everything they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
STAMP := $(VENV)/.synced

.PHONY: help lock install protos protos-check buf-lint buf-breaking devservers polyglot lint typecheck \
	test test-unit test-integration test-e2e test-interop faults fuzz bench run clean

help: ## Show this help.
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# requirements.lock pins every package (with hashes) for Python 3.11; `make lock` refreshes it.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || $(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) pip sync --quiet --python $(PY) --require-hashes requirements.lock
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	@touch $@

lock: ## Re-resolve requirements.lock from pyproject.toml.
	@test -x $(UV) || $(MAKE) install
	$(UV) pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 --quiet -o requirements.lock

install: $(STAMP) ## Create .venv and install dagwire with every locked dependency.

protos: install ## Regenerate dagwire/v1/ from protos/ (never edit the generated code).
	$(PY) scripts/gen_protos.py

protos-check: install ## Fail when dagwire/v1/ is stale against protos/.
	$(PY) scripts/gen_protos.py --check

buf-lint: ## buf lint on protos/ (buf built from its pinned Go module on first use).
	scripts/buf.sh lint protos

buf-breaking: ## buf breaking: protos/ against the last released contract (protos/baseline/).
	scripts/buf.sh breaking protos --against protos/baseline/dagwire-v1.binpb

polyglot: ## Build the Go, TypeScript and Java clients and adapters (stubs generated from protos/).
	scripts/build_go.sh
	scripts/build_node.sh
	scripts/build_java.sh

devservers: ## Build FerretDB + MinIO (cached outside the checkout) and install PostgreSQL if missing.
	scripts/devservers.sh >/dev/null

lint: install ## ruff.
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install ## mypy --strict on the core, the gRPC edge and the services.
	$(VENV)/bin/mypy -p dagwire.graph -p dagwire.runtime -p dagwire.stores -p dagwire.models \
		-p dagwire.spec -p dagwire.errors -p dagwire.auth -p dagwire.grants -p dagwire.quotas -p dagwire.limits -p dagwire.settings -p dagwire.ids -p dagwire.toolbox -p dagwire.rpc -p dagwire.sdk
	@# services/ installs as `dagwire_services` (a package-dir mapping mypy cannot follow): link it
	@mkdir -p $(VENV)/mypy-path && ln -sfn $(CURDIR)/services $(VENV)/mypy-path/dagwire_services && ln -sfn $(CURDIR)/clients/python $(VENV)/mypy-path/dagwire_cli
	MYPYPATH=$(VENV)/mypy-path $(VENV)/bin/mypy -p dagwire_services -p dagwire_cli

# The fault suite's sample in `make test`: faults per kind (docs/faults.md); `make faults` runs long.
FAULTS_N ?= 1

test: install lint typecheck protos-check buf-lint buf-breaking devservers polyglot ## Lint, type-check, check protos, build every language, run every test.
	DAGWIRE_FAULTS_N=$${DAGWIRE_FAULTS_N:-$(FAULTS_N)} $(VENV)/bin/pytest tests

test-unit: install ## Unit tests only (no servers).
	$(VENV)/bin/pytest tests/unit

test-integration: install devservers ## Integration tests (real FerretDB, MinIO, gRPC on loopback).
	$(VENV)/bin/pytest tests/integration

test-e2e: install ## The CLI against `dagwire up`.
	$(VENV)/bin/pytest tests/e2e

test-interop: install devservers polyglot ## Go, TypeScript and Java clients and adapters against the services.
	$(VENV)/bin/pytest tests/interop

faults: install devservers ## Fault suite: kill -9 every kind of process N times each (N=20, SEED=..., KINDS=a,b).
	DAGWIRE_FAULTS_N=$(or $(N),20) DAGWIRE_FAULTS_SEED=$(or $(SEED),0) \
		DAGWIRE_FAULTS_KINDS=$(or $(KINDS),orchestrator,store,adapter,dispatcher,ferretdb,postgres,minio) \
		$(VENV)/bin/pytest tests/faults

# The fuzz suites' sample in `make test` is small and seeded (seed 0); `make fuzz` runs long.
fuzz: install ## Fuzz the spec parser and every RPC (EXAMPLES=200 per property/method, SEED=... to replay).
	DAGWIRE_FUZZ_EXAMPLES=$(or $(EXAMPLES),200) DAGWIRE_FUZZ_SEED=$(SEED) \
		$(VENV)/bin/pytest tests/unit/test_spec_fuzz.py tests/integration/test_rpc_fuzz.py

bench: install ## Benchmarks; prints tables.
	$(PY) -m bench

run: install ## Bring the services up, run examples/hello.yaml through them (EXAMPLE=... for another), stop.
	$(PY) examples/run_through_services.py $(or $(EXAMPLE),examples/hello.yaml) --data-dir .dagwire

clean: ## Remove the virtualenv and caches.
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
