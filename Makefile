# cdp-ingest: `make help` lists the targets. The two set-up commands of the README are
# `make demo` and `make test`; both install what they need first (scripts/bootstrap.sh).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help bootstrap demo test test-fast ui lint typecheck bench bench-mapping bench-replay services-up services-down lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

bootstrap: ## install Debian packages, uv and the pinned venv (idempotent)
	@scripts/bootstrap.sh

demo: bootstrap ## the main job: run every import DAG once on sample data and print a summary
	$(PY) scripts/demo.py

test: bootstrap ## the whole test suite against the real local services
	@$(VENV)/bin/pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

test-fast: bootstrap ## tests without the slow (big-file) ones
	$(VENV)/bin/pytest -q -m "not slow" $(PYTEST_ARGS)

ui: bootstrap ## start services + `airflow standalone` on the demo config, with an SFTP account + mail sink (Ctrl-C stops all)
	$(PY) scripts/demo.py --ui

lint: bootstrap ## ruff on everything, mypy on the engine
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: bootstrap ## benchmarks/bulk_import.py (prints a table, writes benchmarks/results/*.json)
	$(PY) benchmarks/bulk_import.py

bench-mapping: bootstrap ## benchmarks/mapping_paths.py: transform CPU per row, row by row vs columnar (no store)
	$(PY) benchmarks/mapping_paths.py

bench-replay: bootstrap ## benchmarks/replay.py: 1M archived messages into a no-op receiver (+ the 10x archive)
	$(PY) benchmarks/replay.py

services-up: bootstrap ## start all local services in .run/services (prints state JSON)
	$(PY) scripts/devservices.py start --run-dir .run/services

services-down: ## stop the services started by services-up (by PID)
	$(PY) scripts/devservices.py stop --run-dir .run/services

lock: ## recompile the pinned requirements from requirements*.in
	uv pip compile requirements.in -p 3.11 -o requirements.txt
	uv pip compile requirements-dev.in -p 3.11 -o requirements-dev.txt

clean: ## remove run state (not the venv)
	rm -rf .run .pytest_cache .ruff_cache .mypy_cache
