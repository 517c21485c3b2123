# One entry point for people and CI. `make serve` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: serve test lint typecheck pytest soak system-deps install-server install-dev clean
.PHONY: install-ray serve-ray test-cluster

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.server-installed: requirements/server.txt requirements/constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements/server.txt -c requirements/constraints.txt
	touch $@

$(VENV)/.dev-installed: requirements/server.txt requirements/train.txt requirements/dev.txt requirements/typing-nodeps.txt requirements/constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements/dev.txt -c requirements/constraints.txt
	$(BIN)/pip install --quiet --no-deps -r requirements/typing-nodeps.txt
	touch $(VENV)/.server-installed $@

$(VENV)/.ray-installed: requirements/ray.txt requirements/server.txt requirements/constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements/ray.txt -c requirements/constraints.txt
	touch $@

install-server: $(VENV)/.server-installed  ## server run-time dependencies only (no torch)
install-dev: $(VENV)/.dev-installed        ## everything: training, export, tests, linters
install-ray: $(VENV)/.ray-installed        ## Ray Serve (deploy/ray, tests/ray); python -m server never needs it

serve: install-server  ## start the service on the shipped demo model, port $(PORT)
	$(BIN)/python -m server --port $(PORT)

serve-ray: install-ray  ## the service on Ray Serve on this machine (a one-node Ray cluster), port $(PORT)
	FCN_PORT=$(PORT) $(BIN)/python -m deploy.ray

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install-dev
	$(BIN)/mypy common engine export/trt.py export/precision.py export/triton.py

system-deps:  ## Debian packages the browser tests drive (the Docker test installs its own engine)
	bash scripts/install-chromium.sh

pytest: install-dev install-ray system-deps
	$(BIN)/python -m pytest -m "not cluster"

test-cluster: install-dev install-ray  ## the multi-node Ray cluster tests (minutes; .ci/run runs them)
	$(BIN)/python -m pytest -m cluster tests/ray

soak: install-dev  ## minutes of sustained load against a real server; figures go to bench/results/
	$(BIN)/python -m bench.soak

test: lint typecheck pytest  ## install everything, lint, type-check and run the whole suite

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
