# One entry point for people and CI. `make serve` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: serve test lint typecheck pytest soak system-deps install-server install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.server-installed: requirements/server.txt requirements/constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements/server.txt -c requirements/constraints.txt
	touch $@

$(VENV)/.dev-installed: requirements/server.txt requirements/train.txt requirements/dev.txt requirements/typing-nodeps.txt requirements/constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements/dev.txt -c requirements/constraints.txt
	$(BIN)/pip install --quiet --no-deps -r requirements/typing-nodeps.txt
	touch $(VENV)/.server-installed $@

install-server: $(VENV)/.server-installed  ## server run-time dependencies only (no torch)
install-dev: $(VENV)/.dev-installed        ## everything: training, export, tests, linters

serve: install-server  ## start the service on the shipped demo model, port $(PORT)
	$(BIN)/python -m server --port $(PORT)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install-dev
	$(BIN)/mypy common engine export/trt.py export/precision.py export/triton.py

system-deps:  ## Debian packages the browser tests drive (the Docker test installs its own engine)
	bash scripts/install-chromium.sh

pytest: install-dev system-deps
	$(BIN)/python -m pytest

soak: install-dev  ## minutes of sustained load against a real server; figures go to bench/results/
	$(BIN)/python -m bench.soak

test: lint typecheck pytest  ## install everything, lint, type-check and run the whole suite

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
