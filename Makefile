# facerest — the commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 18081
# insightface (the reference pipeline the correctness tests compare against) asks for the GUI build
# of OpenCV, which would shadow the headless one: it is installed without its dependencies.
INSIGHTFACE := insightface==2.1

.PHONY: run test lint format install dev clean bench

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps $(INSIGHTFACE)
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

run: $(VENV)/.installed
	FACEREST_PORT=$${FACEREST_PORT:-$(PORT)} $(BIN)/facerest serve

test: $(VENV)/.installed-dev
	$(BIN)/ruff check facerest tests
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check facerest tests
	$(BIN)/ruff format --check facerest tests

bench: $(VENV)/.installed
	$(BIN)/facerest bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache models

# --- hardening (issue 4): load test, not part of `make test` (see docs/reliability.md) ---
.PHONY: load-test
CLIENTS ?= 32
DURATION ?= 120
load-test: $(VENV)/.installed
	$(BIN)/python benchmarks/load_test.py --clients $(CLIENTS) --duration $(DURATION)
