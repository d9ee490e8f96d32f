"""Rankings: tie groups, whole-group cuts, and ROC areas that rounding noise cannot move."""

import math

import torch

from circuitfind.core.graph import Architecture, EdgeMask, Graph
from circuitfind.evaluation.rates import edge_and_node_rates, roc_auc
from circuitfind.core.faithfulness import MIB_FRACTIONS
from circuitfind.methods.ranking import auto_search, curve_cuts, edge_ranking, tie_groups, tie_tolerance
from circuitfind.methods.result import CurvePoint


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


# ---- k=auto's validation search ----------------------------------------------------------------

class SizeEvaluator:
    """A stand-in for the validation split: f of a circuit is a function of its size; counts the
    forwards a real split would run (not the empty circuit nor the whole graph)."""

    def __init__(self, f, n_edges):
        self.f, self.n_edges, self.measured, self.n_forwards = f, n_edges, [], 0

    def faithfulness(self, kept):
        n = int(kept.sum())
        if 0 < n < self.n_edges and n not in self.measured:
            self.measured.append(n)
            self.n_forwards += 1
        return self.f(n), self.f(n)


def descent(cuts, f, target, refine):
    """The search from the largest circuit down (the obvious way): measure the curve's circuits
    until one falls short, then bisect between it and the last that reached (``refine`` times)."""
    chosen, lo = None, 0
    for cut in sorted(set(cuts), reverse=True):
        if f(cut) >= target:
            chosen = cut
        else:
            lo = cut
            break
    if chosen is None:
        return None
    hi = chosen
    for _ in range(refine):
        if hi - lo <= 1:
            break
        middle = (lo + hi) // 2
        lo, hi = (lo, middle) if f(middle) >= target else (middle, hi)
    return hi


def search_graph() -> Graph:
    return Graph(Architecture(n_layers=6, n_heads=4, has_mlps=True, split_embed=False), "qkv")


def search(f_validation, f_test, target, refine=2):
    """auto_search on a ranking of every edge in its own group (cut c = the top c edges, unpruned)."""
    graph = search_graph()
    n = graph.n_edges
    ranking = edge_ranking(graph, -torch.arange(n, dtype=torch.float64), 0.0)
    curve, cut_of = [], {}
    for fraction, cut in curve_cuts(ranking):
        point = CurvePoint(cut, EdgeMask(graph, ranking.circuit(cut, pruned=False)), fraction=fraction,
                           n_unpruned=cut, faithfulness_test=f_test(cut))
        cut_of[id(point)] = cut
        curve.append(point)
    evaluator = SizeEvaluator(f_validation, n)
    chosen = auto_search(ranking, curve, cut_of, evaluator, target, refine, pruned=False)
    return chosen, evaluator, [cut for _, cut in curve_cuts(ranking)], n


def rising(n, at, width):
    """A faithfulness curve over sizes that rises from 0 to 1 around ``at`` edges (the empty circuit 0,
    the whole graph 1, as f is)."""
    return lambda c: 1.0 if c >= n else 0.0 if c == 0 else 1 / (1 + math.exp(min(-(c - at) / width, 700)))


def test_k_auto_keeps_the_descents_circuit_on_a_rising_curve_wherever_the_test_curve_crosses():
    n = search_graph().n_edges
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        at, shift, width = (torch.rand(3, generator=generator) * torch.tensor([n, n, 50])).tolist()
        target = float(torch.rand(1, generator=generator)) * 0.98 + 0.01
        f_val, f_test = rising(n, at, width + 1), rising(n, at + shift - n / 2, width + 1)
        chosen, evaluator, cuts, _ = search(f_val, f_test, target)
        want = descent(cuts, f_val, target, 2)
        assert (chosen.parameter if chosen is not None else None) == want, (at, shift, width, target)
        assert chosen.faithfulness == f_val(want) >= target


def test_k_auto_where_the_test_curve_crosses_as_validation_does_measures_no_large_circuit():
    n = search_graph().n_edges
    f = rising(n, 0.15 * n, 0.02 * n)  # crosses 0.8 between the top 10% and 20%
    chosen, evaluator, cuts, _ = search(f, f, 0.8)
    assert chosen.parameter == descent(cuts, f, 0.8, 2)
    assert max(evaluator.measured) <= 0.2 * n  # neither 50% nor 20% ...
    # ... where the descent runs 50%, 20%, 10% and two bisections: the bisection's circuit just above
    # where the test curve crosses, and the one below it
    assert evaluator.n_forwards == 2


def test_k_auto_on_any_curve_keeps_a_measured_crossing():
    generator, n = torch.Generator().manual_seed(1), search_graph().n_edges
    for _ in range(40):
        values = torch.rand(2000, generator=generator).tolist()
        f_val = lambda c, v=values: 1.0 if c >= n else v[c] if c else 0.0  # noqa: E731
        f_test = lambda c, v=values[::-1]: 1.0 if c >= n else v[c] if c else 0.0  # noqa: E731
        target = float(torch.rand(1, generator=generator)) * 0.9 + 0.05
        chosen, evaluator, cuts, _ = search(f_val, f_test, target)
        assert chosen is not None and f_val(chosen.parameter) >= target  # the whole graph always reaches it
        below = [c for c in [0, *evaluator.measured] if c < chosen.parameter]
        assert f_val(max(below)) < target  # the next smaller circuit it measured falls short


def test_k_auto_keeps_nothing_when_even_the_whole_graph_falls_short():
    chosen, evaluator, _, _ = search(lambda c: 0.5, lambda c: 0.5, 0.9)
    assert chosen is None
