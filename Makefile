# Two entry points (see README): `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint typecheck bench docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned to 2.13.0 (the CPU build on local disk); see pyproject's `model` extra
	$(BIN)/python -m pip install --quiet -e '.[model,gateway,dev]'
	touch $(STAMP)

setup: $(STAMP)

# The main job: the OpenAI-compatible gateway on the embedded model, http://127.0.0.1:8000/v1
# (on first start it creates the master secret and prints a demo API key once).
run: $(STAMP)
	$(BIN)/distillguard serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests benchmarks scripts

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/detect.py

docs: $(STAMP)
	$(BIN)/python scripts/gen_cli_docs.py > docs/cli.md
	$(BIN)/python scripts/gen_architecture_docs.py > docs/architecture.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
