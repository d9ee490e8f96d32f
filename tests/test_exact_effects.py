"""Exact single-edge effects (batched restarts) against plain full forwards; Spearman and top-k overlap."""

import pandas as pd
import pytest
import torch

from circuitfind.evaluation.exact_effects import average_ranks, compare_attributions, single_edge_effects, spearman, top_k_overlap
from circuitfind.methods.attribution import objective_loss

from conftest import config, tiny_model
from test_attribution import GAP, random_problem


@pytest.mark.parametrize("granularity, corruption, attn_only", [
    ("qkv", "corrupted", False), ("heads", "zero", True), ("nodes", "mean", False),
])
def test_single_edge_effects_match_one_full_forward_per_edge(granularity, corruption, attn_only):
    model = tiny_model(n_layers=2, n_heads=2, d_model=12, attn_only=attn_only)
    problem = random_problem(model, corruption, granularity, metric=GAP)
    effects = single_edge_effects(problem, "metric", max_batch=5)  # several chunks per stage
    engine, positions = problem.engine(), problem.data("validation").positions
    n = problem.graph.n_edges
    base = float(objective_loss(problem, engine.logits(torch.ones(n, dtype=torch.float64), positions), "metric"))
    for i in range(n):
        mask = torch.ones(n, dtype=torch.float64)
        mask[i] = 0
        removed = float(objective_loss(problem, engine.logits(mask, positions), "metric"))
        assert effects[i].item() == pytest.approx(removed - base, abs=1e-10)
    assert effects.abs().max() > 1e-3


def test_single_edge_effects_at_a_circuit_match_one_full_forward_per_edge():
    model = tiny_model(n_layers=2, n_heads=2, d_model=12)
    problem = random_problem(model, "corrupted", "qkv", metric=GAP)
    n = problem.graph.n_edges
    circuit = (torch.rand(n, generator=torch.Generator().manual_seed(1)) < 0.7).double()
    edges = [e for e in range(0, n, 3) if circuit[e] == 1]
    effects = single_edge_effects(problem, "metric", circuit=circuit, edges=edges, max_batch=4)
    engine, positions = problem.engine(), problem.data("validation").positions
    base = float(objective_loss(problem, engine.logits(circuit, positions), "metric"))
    for i in range(n):
        if i not in edges:
            assert torch.isnan(effects[i])
            continue
        mask = circuit.clone()
        mask[i] = 0
        removed = float(objective_loss(problem, engine.logits(mask, positions), "metric"))
        assert effects[i].item() == pytest.approx(removed - base, abs=1e-10)
    assert effects[edges].abs().max() > 1e-4


def test_spearman_and_ranks_against_pandas():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 6, (40,), generator=g).double()  # many ties
    b = a + torch.randn(40, generator=g, dtype=torch.float64)
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    expected = pd.Series(a.numpy()).rank().corr(pd.Series(b.numpy()).rank())  # Pearson of pandas' average ranks
    assert spearman(a, b) == pytest.approx(expected, abs=1e-12)
    assert spearman(a, -a) == pytest.approx(-1.0)


def test_top_k_overlap_reads_absolute_values():
    a = torch.tensor([5.0, -4.0, 0.1, 3.0])
    b = torch.tensor([0.0, 4.0, 5.0, -3.0])
    assert top_k_overlap(a, b, 2) == 0.5  # {0, 1} against {2, 1}
    assert top_k_overlap(a, b, 3) == pytest.approx(2 / 3)


def test_compare_attributions_on_tracr():
    from circuitfind.runs.pipeline import build_problem
    problem = build_problem(config("task=tracr_proportion", "corruption=zero"))
    rows = compare_attributions(problem, "answer_logit", steps=5, ks=(5,))
    assert [r["method"] for r in rows] == ["eap", "eap_ig_5"]
    for row in rows:
        assert -1 <= row["spearman_signed"] <= 1 and 0 <= row["top5_overlap"] <= 1
    # answer_logit is linear in the logits; removing an edge the output does not read changes nothing,
    # and both the exact effect and the attribution see that, so the correlation is clearly positive.
    assert rows[1]["spearman_abs"] > 0.5
