"""Rankings: tie groups, whole-group cuts, and ROC areas that rounding noise cannot move."""

import torch

from circuitfind.core.graph import Architecture, EdgeMask, Graph
from circuitfind.evaluation.rates import edge_and_node_rates, roc_auc
from circuitfind.core.faithfulness import MIB_FRACTIONS
from circuitfind.methods.ranking import curve_cuts, edge_ranking, tie_groups, tie_tolerance


def test_tie_groups_chain_scores_within_the_tolerance():
    scores = torch.tensor([0.5, 1.0, 1.0 - 1e-9, 0.0, 1e-9, 0.5 + 2e-9, -1e-9], dtype=torch.float64)
    order, group = tie_groups(scores, tolerance=5e-9)
    assert group.tolist() == [1, 0, 0, 2, 2, 1, 2]
    assert order == [1, 2, 0, 5, 3, 4, 6]  # by group, then by index (not by the noise)


def test_tolerance_follows_the_dtype():
    scores = torch.tensor([2.0, -4.0, 1.0])
    assert tie_tolerance(scores, torch.float32) == 8 * torch.finfo(torch.float32).eps * 4.0
    assert tie_tolerance(scores, torch.float64) == 8 * torch.finfo(torch.float64).eps * 4.0


def _auc(graph, scores, truth, tolerance):
    ranking = edge_ranking(graph, scores, tolerance)
    points = []
    for cut in range(ranking.n_cuts):
        rates = edge_and_node_rates(EdgeMask(graph, ranking.circuit(cut, pruned=False)), truth)
        points.append((rates["edge_fpr"], rates["edge_tpr"]))
    return roc_auc(points)


def test_noise_within_the_tolerance_leaves_the_auc_unchanged():
    graph = Graph(Architecture(n_layers=2, n_heads=2, has_mlps=True, split_embed=True), "qkv")
    n = graph.n_edges
    g = torch.Generator().manual_seed(0)
    truth = EdgeMask(graph, torch.rand(n, generator=g) < 0.3)
    # a few clear scores, and most edges at exactly zero (edges a program does not use)
    scores = torch.zeros(n, dtype=torch.float64)
    clear = torch.randperm(n, generator=g)[:8]
    scores[clear] = torch.linspace(1.0, 0.3, 8, dtype=torch.float64)
    tolerance = tie_tolerance(scores, torch.float32)
    reference = _auc(graph, scores, truth, tolerance)
    untied_aucs = set()
    for seed in range(5):
        noise = (torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) - 0.5) * tolerance
        noisy = scores + noise  # every pair of tied scores stays within the tolerance
        assert _auc(graph, noisy, truth, tolerance) == reference
        untied_aucs.add(round(_auc(graph, noisy, truth, 0.0), 12))
    assert len(untied_aucs) > 1  # without tie groups, the noise's order decides the area


def test_curve_cuts_take_whole_groups_within_each_fraction():
    graph = Graph(Architecture(n_layers=2, n_heads=2, has_mlps=True, split_embed=False), "qkv")
    scores = torch.zeros(graph.n_edges, dtype=torch.float64)
    scores[:3] = 1.0  # one tie group of three edges, then everything else tied at zero
    ranking = edge_ranking(graph, scores, 1e-9)
    assert ranking.sizes == [0, 3, graph.n_edges]
    cuts = curve_cuts(ranking)
    # every fraction is a point; below 3 edges the empty cut, then the group of three, the whole graph at 100%
    n = graph.n_edges
    expected = sorted([(p, 2 if p == 1.0 else (1 if int(p * n) >= 3 else 0)) for p in MIB_FRACTIONS],
                      key=lambda t: (-t[1], -t[0]))
    assert cuts == expected and len(cuts) == 10


def test_max_points_adds_evenly_spaced_cuts_up_to_that_many_points():
    graph = Graph(Architecture(n_layers=2, n_heads=2, has_mlps=True, split_embed=False), "qkv")
    scores = torch.arange(graph.n_edges, dtype=torch.float64)  # every edge its own group
    ranking = edge_ranking(graph, scores, 0.0)
    plain = curve_cuts(ranking)
    assert len(curve_cuts(ranking, points=len(plain) + 6)) == len(plain) + 6
    assert curve_cuts(ranking, points=2) == plain  # never fewer than MIB's fractions give
    extra = [c for p, c in curve_cuts(ranking, points=len(plain) + 6) if p is None]
    assert len(extra) == 6 and not set(extra) & {c for _, c in plain}
