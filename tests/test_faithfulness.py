"""Faithfulness, CPR and CMD: hand computations, and f at the two ends of every task."""

import math

import pytest
import torch

from circuitfind.core.faithfulness import MIB_FRACTIONS, areas, faithfulness, full_model_metric

from conftest import config


def test_cpr_and_cmd_of_a_step_curve_by_hand():
    # f = 0 up to 20%, 1 from 50%: CPR = 0.3 * (0 + 1) / 2 + 0.5 * 1 = 0.65;
    # CMD = 0.199 * 1 (0.1% .. 20%) + 0.3 * (1 + 0) / 2 = 0.349
    f = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    result = areas(MIB_FRACTIONS, f)
    assert result.cpr == pytest.approx(0.65, abs=1e-12)
    assert result.cmd == pytest.approx(0.349, abs=1e-12)
    assert result.full_range and result.range_note() == ""


def test_cmd_counts_overshoot_and_cpr_rewards_it():
    # f = 1.5 everywhere: CPR = 1.5 * 0.999, CMD = 0.5 * 0.999
    result = areas(MIB_FRACTIONS, [1.5] * 10)
    assert result.cpr == pytest.approx(1.4985, abs=1e-12)
    assert result.cmd == pytest.approx(0.4995, abs=1e-12)


def test_a_sweep_that_covers_part_of_the_range_is_integrated_there_and_says_so():
    # points at 1% (f 0.2) and 10% (f 0.8), and one at 0% (f 0) cut at 0.1% by interpolation:
    # f(0.1%) = 0.02; CPR = 0.009 * (0.02 + 0.2) / 2 + 0.09 * (0.2 + 0.8) / 2
    result = areas([0.0, 0.01, 0.1], [0.0, 0.2, 0.8])
    assert result.low == pytest.approx(0.001) and result.high == pytest.approx(0.1)
    assert result.cpr == pytest.approx(0.009 * 0.11 + 0.09 * 0.5, abs=1e-12)
    assert result.cmd == pytest.approx(0.009 * (0.98 + 0.8) / 2 + 0.09 * (0.8 + 0.2) / 2, abs=1e-12)
    assert result.range_note() == "0.1%-10%"


def test_faithfulness_formula_and_divergences():
    assert faithfulness(3.0, 1.0, 5.0) == 0.5  # logit difference: (3 - 1) / (5 - 1)
    assert faithfulness(0.25, 1.0, full_model_metric("kl", 1e-17)) == 0.75  # 1 - D(C) / D(empty)
    assert full_model_metric("logit_diff", 2.5) == 2.5
    assert math.isnan(faithfulness(1.0, 2.0, 2.0))


QUICK_TASKS = ["task=tracr_reverse", "task=tracr_proportion", "task=induction"]
ALL_TASKS = ["task=docstring model.pretrained=false", "task=greaterthan model.pretrained=false",
             "task=ioi model.pretrained=false task.n_prompts=4", "task=tracr_sort", "task=tracr_hist"]


def _ends(overrides, corruption):
    from circuitfind.runs.pipeline import build_problem

    problem = build_problem(config(*overrides.split(), f"corruption={corruption}"))
    n = problem.graph.n_edges
    measured_full = problem.evaluate(torch.ones(n, dtype=torch.float32))  # a patched forward, not the cache
    m_full = full_model_metric(problem.metric.name, float(problem.per_prompt(problem.clean_logits()).mean()))
    m_empty = problem.evaluate(torch.zeros(n))
    return faithfulness(measured_full, m_empty, m_full), faithfulness(m_empty, m_empty, m_full)


@pytest.mark.parametrize("overrides", QUICK_TASKS)
@pytest.mark.parametrize("corruption", ["corrupted", "zero"])
def test_full_graph_is_1_and_empty_is_0(overrides, corruption):
    f_full, f_empty = _ends(overrides, corruption)
    assert f_full == pytest.approx(1.0, abs=1e-4)
    assert f_empty == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("overrides", ALL_TASKS)
def test_full_graph_is_1_and_empty_is_0_on_the_other_tasks(overrides):
    f_full, f_empty = _ends(overrides, "corrupted")
    assert f_full == pytest.approx(1.0, abs=1e-4)
    assert f_empty == 0.0
