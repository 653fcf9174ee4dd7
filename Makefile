# The two commands: `make sandbox` and `make test`. Everything else is a
# focused piece of those.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        ?= .venv
PYTHON      ?= python3
VENV_STAMP  := $(VENV)/.requirements.sha256
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Host-side caches shared with the test containers (apt archives and lists,
# pip wheels) so scenarios do not download the same packages again.
export STACK_CACHE_DIR ?= /var/cache/ansible-stack
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
SCENARIO    ?= default

.PHONY: help venv engine images lint unit molecule test sandbox sandbox-destroy bench-stack bench-venv bench-backup clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

# The venv is rebuilt only when requirements.txt changed (hash stamp): quiet
# when nothing changed.
$(VENV_STAMP): requirements.txt
	@scripts/venv.sh "$(VENV)" "$(PYTHON)"

venv: $(VENV_STAMP) ## Create/refresh .venv from requirements.txt

engine: ## Start (or install) a Docker engine
	@scripts/harness.sh engine

images: ## Build the systemd base images when missing
	@scripts/harness.sh images

lint: $(VENV_STAMP) ## yamllint + ansible-lint (production profile)
	@scripts/test.sh lint

unit: $(VENV_STAMP) ## pytest tests/unit
	@scripts/test.sh unit

molecule: $(VENV_STAMP) ## One Molecule scenario: make molecule SCENARIO=postgresql
	@scripts/harness.sh images
	@scripts/test.sh molecule $(SCENARIO)

test: $(VENV_STAMP) ## Everything: lint, unit, all Molecule scenarios
	@scripts/harness.sh images
	@scripts/test.sh all

sandbox: $(VENV_STAMP) ## Deploy the whole stack into local systemd containers
	@scripts/harness.sh images
	@scripts/sandbox.sh up

sandbox-destroy: $(VENV_STAMP) ## Remove the sandbox containers
	@scripts/sandbox.sh destroy

bench-stack: $(VENV_STAMP) ## Benchmark: cold converge, no-op re-run, redeploy under load
	@scripts/harness.sh images
	@benchmarks/stack_bench.sh

bench-venv: ## Benchmark: a release's virtualenv from the wheelhouse, pip vs uv
	@scripts/harness.sh images
	@benchmarks/venv_bench.sh

bench-backup: $(VENV_STAMP) ## Benchmark: role backup vs bare pg_dump on pgbench -s 50
	@scripts/harness.sh images
	@molecule converge -s backups >/dev/null
	@benchmarks/backup_bench.sh

clean: ## Remove the venv and local caches
	rm -rf $(VENV) .cache
