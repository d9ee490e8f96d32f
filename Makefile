# circuitfind: `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# Tests that need GPT-2's tokenizer find it here (never copied into the project).
export CIRCUITFIND_GPT2_TOKENIZER ?= $(abspath ../shared/gpt2-tokenizer)
# Without this every Hugging Face hub call retries for ~20 s before failing offline.
export HF_HUB_OFFLINE ?= 1

VENV_TL4 ?= .venv-tl4
# The tests that touch models, run again under TransformerLens 4 (make test-tl4): the model view's
# bridge backend, its native bridges (the shipped weights) and runs through them, and the tracr
# programs' own tests.
TL4_TESTS ?= tests/test_tl4_bridge.py tests/test_tl4_native.py tests/test_tl4_runs.py tests/test_tracr_models.py \
	tests/test_tracr_suite.py

.PHONY: help setup setup-tl4 run test test-tl4 test-all tracr-weights clean gpu-check

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,tl3]'
	touch $@

setup: $(VENV)/.installed  ## create .venv and install circuitfind with its pinned dependencies (pip), TransformerLens 3.9

$(VENV_TL4)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_TL4)
	$(VENV_TL4)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,tl4]'
	touch $@

setup-tl4: $(VENV_TL4)/.installed  ## a second venv, .venv-tl4, with TransformerLens 4.3 instead of 3.9

run: setup  ## the main job on the offline default: ACDC on tracr-reverse
	$(VENV)/bin/circuitfind $(ARGS)

# Tests build tiny models, which run fastest on one thread (more threads only add contention on a
# shared machine); set OMP_NUM_THREADS yourself to override.  The suite is spread over
# TEST_WORKERS processes (pytest-xdist; TEST_WORKERS=0 runs it in this one process).
TEST_ENV = OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}
TEST_WORKERS ?= 2

test: setup  ## the test suite CI runs (everything but tests marked slow), on TEST_WORKERS processes
	$(TEST_ENV) $(PY) -m pytest -m "not slow" -q -n $(TEST_WORKERS)

test-tl4: setup-tl4  ## the tests that touch models, under TransformerLens 4.3 (.venv-tl4)
	$(TEST_ENV) $(VENV_TL4)/bin/python -m pytest -m "not slow" -q $(TL4_TESTS)

test-all: setup  ## every test, slow ones included
	$(TEST_ENV) $(PY) -m pytest -q -n $(TEST_WORKERS)

tracr-weights:  ## recompile the shipped tracr weights (needs jax: installs .[tracr] into .venv-tracr)
	$(PYTHON) -m venv .venv-tracr
	.venv-tracr/bin/pip install --quiet -e '.[tracr]'
	.venv-tracr/bin/python scripts/compile_tracr.py

gpu-check: setup  ## on a GPU machine: engine = reference on CUDA, ACDC cpu = gpu, s/edge test, IOI projection (JSON=file.json)
	$(PY) benchmarks/gpu_check.py --device $(or $(DEVICE),cuda) $(if $(JSON),--out $(JSON))

clean:  ## remove run outputs (not the virtual environment)
	rm -rf outputs multirun

# ---- the paper's figures and tables (src/circuitfind/figures/, figure_specs/) ---------------
# Each runs the sweeps it lacks under outputs/figures/runs (reusing complete ones) and writes the
# image or tables with a manifest to outputs/figures.  Variables: TASKS="tracr_reverse ioi ..."
# (fig3, tables), CORRUPTION=zero|corrupted (fig3), PRESET=quick|paper, JOBS=2 (joblib's jobs
# per sweep), LAUNCHER=auto|joblib|basic|in_process|submitit_local|slurm, OUT=outputs/figures (sweeps go to OUT/runs).
FIGURES := $(PY) -m circuitfind.figures
FIGURE_ARGS = $(if $(PRESET),--preset $(PRESET)) $(if $(JOBS),--jobs $(JOBS)) $(if $(LAUNCHER),--launcher $(LAUNCHER)) $(if $(OUT),--out $(OUT))
.PHONY: fig3 fig4 tables tracr-suite

fig3: setup  ## paper fig. 3: edge-level ROC per task, every method (TASKS=..., CORRUPTION=zero|corrupted)
	$(FIGURES) fig3 $(if $(TASKS),--tasks $(TASKS)) $(if $(CORRUPTION),--corruption $(CORRUPTION)) $(FIGURE_ARGS)

fig4: setup  ## paper fig. 4: Induction, test KL against edges kept, zero and corrupted ablation
	$(FIGURES) fig4 $(FIGURE_ARGS)

tables: setup  ## the appendix AUC tables (edge/node, corrupted/zero, KL/task metric): CSV and Markdown
	$(FIGURES) tables $(if $(TASKS),--tasks $(TASKS)) $(FIGURE_ARGS)

tracr-suite: setup  ## the tracr suite: every method x program x ablation, AUC vs program-derived circuits
	$(FIGURES) tracr_suite $(if $(TASKS),--tasks $(TASKS)) $(FIGURE_ARGS)
