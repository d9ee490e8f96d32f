"""What a new user meets in the first hour: fast answers, clear refusals, quiet model building."""

import importlib
import subprocess
import sys
import time
import warnings

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

import circuitfind
from circuitfind.runs.validate import DIVERGENCES

from conftest import config, tiny_model


def test_report_help_answers_before_the_heavy_imports():
    code = ("import sys; from circuitfind.report_cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as stop:\n"
            "    print(sorted(m for m in ('torch', 'matplotlib', 'pandas') if m in sys.modules), stop.code)")
    started = time.time()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines()[0].startswith("usage: circuitfind-report")
    assert result.stdout.splitlines()[-1] == "[] 0", result.stdout + result.stderr
    assert time.time() - started < 60  # a Python start on a loaded machine; no torch


def test_an_api_metric_must_give_one_value_per_prompt():
    model = tiny_model(n_layers=1, n_heads=2, d_model=16)
    generator = torch.Generator().manual_seed(0)
    clean, corrupted = (torch.randint(0, 40, (4, 5), generator=generator) for _ in range(2))

    def mean_top_logit(logits):
        return logits[:, -1].max(-1).values.mean()

    task = circuitfind.make_task(model, clean, corrupted, metric=mean_top_logit, lower_is_better=False)
    with pytest.raises(ValueError, match=r"metric mean_top_logit returned one number for 4 prompts; return one "
                                         r"value per prompt \(a tensor of shape \[4\]"):
        circuitfind.find_circuit(task, "hisp")

    def top_logit(logits):
        return logits[:, -1].max(-1).values

    task = circuitfind.make_task(model, clean, corrupted, metric=top_logit, lower_is_better=False)
    assert circuitfind.find_circuit(task, "hisp", k=3).result.circuit.n_kept > 0


def test_circuitfind_builds_its_models_without_the_deprecation_warning():
    import circuitfind.models
    from circuitfind.models.loading import load_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importlib.reload(circuitfind.models)  # its filter goes in front of "always", as at import
        load_model(dict(name="induction_2l", kind="shipped", pretrained=False))
        ours = [str(w.message) for w in caught if "HookedTransformer is deprecated" in str(w.message)]
        assert ours == []
        HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=5,
                                                  attn_only=True))  # the user's own: still warned
        assert any("HookedTransformer is deprecated" in str(w.message) for w in caught)


@pytest.mark.parametrize("name", ["tracr_reverse", "tracr_proportion", "tracr_sort", "tracr_frac_prevs_a",
                                  "induction"])
def test_a_tasks_default_metric_is_a_divergence(name):
    """validate.py refuses EAP's objective=metric with metric=null from the config alone: that rests
    on every task's default metric being a divergence (checked here on the tasks that build in seconds;
    ioi, greaterthan, docstring and pairs name kl in their code)."""
    from circuitfind.runs.pipeline import build_problem

    small = ("task.n_prompts=4", "task.seq_len=12", "task.span_len=4") if name == "induction" else ()
    assert build_problem(config(f"task={name}", *small)).metric.name in DIVERGENCES
