# circuitfind: `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# Tests that need GPT-2's tokenizer find it here (never copied into the project).
export CIRCUITFIND_GPT2_TOKENIZER ?= $(abspath ../shared/gpt2-tokenizer)
# Without this every Hugging Face hub call retries for ~20 s before failing offline.
export HF_HUB_OFFLINE ?= 1

.PHONY: help setup run test test-all tracr-weights clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

setup: $(VENV)/.installed  ## create .venv and install circuitfind with its pinned dependencies (pip)

run: setup  ## the main job on the offline default: ACDC on tracr-reverse
	$(VENV)/bin/circuitfind $(ARGS)

test: setup  ## the test suite CI runs (everything but tests marked slow)
	$(PY) -m pytest -m "not slow" -q

test-all: setup  ## every test, slow ones included
	$(PY) -m pytest -q

tracr-weights:  ## recompile the shipped tracr weights (needs jax: installs .[tracr] into .venv-tracr)
	$(PYTHON) -m venv .venv-tracr
	.venv-tracr/bin/pip install --quiet -e '.[tracr]'
	.venv-tracr/bin/python scripts/compile_tracr.py

clean:  ## remove run outputs (not the virtual environment)
	rm -rf outputs multirun
