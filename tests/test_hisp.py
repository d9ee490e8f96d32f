"""HISP: attributions against finite differences, the objective, the ranking and its curve."""

import csv

import pytest
import torch

from circuitfind.tasks.ground_truth import ground_truth_mask
from circuitfind.core.graph import Architecture, Graph
from circuitfind.methods import Problem, get_method
from circuitfind.methods.components import Components
from circuitfind.methods.hisp import component_attributions, layer_normalised
from circuitfind.methods.objective import objective_per_prompt
from circuitfind.core.metrics import KL, Metric
from circuitfind.runs.pipeline import ConfigError, run
from circuitfind.tasks import build_task

from conftest import answer_gap, config, random_problem, tiny_model


LOGIT = Metric("logit3", answer_gap, lower_is_better=False)


@pytest.mark.parametrize("granularity, corruption, attn_only", [
    ("qkv", "corrupted", False), ("qkv", "zero", True), ("heads", "corrupted", False), ("nodes", "mean", False),
])
@pytest.mark.parametrize("objective", ["metric", "answer_logit"])
def test_each_prompts_attribution_is_the_derivative_of_its_objective_along_the_gate(
        granularity, corruption, attn_only, objective):
    """(C(x) - C(x')) . dF/dC is d/dz F at z = 1 for the gate z * C(x) + (1 - z) * C(x'): check it per
    prompt with a central finite difference of the patched engine (float64)."""
    model = tiny_model(n_layers=2, n_heads=2, d_model=16, attn_only=attn_only)
    problem = random_problem(model, corruption, granularity, metric=LOGIT)
    components = Components(problem.graph)
    attributions = component_attributions(problem, components, objective)
    engine, positions = problem.engine(), problem.data("validation").positions
    eps = 1e-5
    for i in range(len(components)):
        def F(z):
            gates = torch.ones(len(components), dtype=torch.float64)
            gates[i] = z
            logits = engine.logits(components.edge_mask_values(gates), positions)
            return objective_per_prompt(problem, logits, "validation", objective)
        finite = (F(1 + eps) - F(1 - eps)) / (2 * eps)
        torch.testing.assert_close(attributions[:, i], finite, rtol=1e-5, atol=1e-8)
    assert attributions.abs().sum() > 0


def test_importance_is_normalised_within_each_layer():
    model = tiny_model(n_layers=3, n_heads=2, d_model=16)
    problem = random_problem(model, "corrupted", metric=LOGIT)
    result = get_method("hisp")(problem, objective="metric")
    components = Components(problem.graph)
    importance = {row["component"]: row["importance"] for row in result.tables["ranking.csv"]}
    for layer in components.layers():
        norm = torch.tensor([importance[components.names[i]] for i in layer]).norm()
        assert norm.item() == pytest.approx(1.0)
    raw = torch.tensor([1.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    three = Components(Graph(Architecture.from_config(tiny_model(n_layers=3, n_heads=1, d_model=8, attn_only=True).cfg)))
    assert layer_normalised(raw, three).tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3, 0, 0, 0, 0, 0, 0])  # all-zero layers stay 0


def test_kl_has_no_gradient_at_the_clean_model_so_auto_scores_the_clean_answer():
    model = tiny_model(n_layers=2, n_heads=2, d_model=16)
    problem = random_problem(model, "corrupted", metric=KL)
    with pytest.raises(ValueError, match="metric kl is a divergence from the unpatched model: its gradient there is zero"):
        get_method("hisp")(problem, objective="metric")
    zero_gradient = Metric("flat", lambda logits, clean, data=None: (logits * 0).sum((1, 2)))
    flat = random_problem(model, "corrupted", metric=zero_gradient)
    with pytest.raises(ValueError, match="the gradient of metric flat is zero at the unpatched model"):
        get_method("hisp")(flat, objective="metric")
    result = get_method("hisp")(problem)  # auto
    assert result.details["objective"] == "answer_logit"
    assert any(row["importance"] > 0 for row in result.tables["ranking.csv"])


def test_the_curve_keeps_whole_tie_groups_of_top_components_at_mibs_fractions():
    model = tiny_model(n_layers=2, n_heads=2, d_model=16)
    problem = random_problem(model, "corrupted", metric=LOGIT)
    result = get_method("hisp")(problem, k=3, pruned=False)
    components = Components(problem.graph)
    ranking = result.ranking
    n_edges = problem.graph.n_edges
    curve = result.curve
    assert curve[0].fraction == 1.0 and curve[0].circuit.n_kept == n_edges  # everything kept
    for point in curve:  # the largest cut that fits in the fraction
        cut = ranking.cut_for(int(point.fraction * n_edges))
        assert torch.equal(point.circuit.kept, ranking.circuit(cut, pruned=False))
        # (no component kept still keeps the edges no component gates: embed->resid_post)
        assert point.n_unpruned <= max(point.fraction * n_edges, ranking.sizes[0])
    for bigger, smaller in zip(curve, curve[1:]):
        assert not (smaller.circuit.kept & ~bigger.circuit.kept).any()  # nested circuits
    names = [row["component"] for row in result.tables["ranking.csv"]]
    keep = torch.tensor([name in names[:3] for name in components.names])
    assert torch.equal(result.circuit.kept, components.circuit(keep).kept)  # the run's own circuit: top 3


def test_tracr_reverse_ranks_the_canonical_mlps_and_value_first():
    task = build_task("tracr_reverse", seed=0)
    graph = Graph(Architecture.from_config(task.model.cfg, split_embed=True))
    problem = Problem(task, graph, "zero", task.metric(None), progress=False)
    result = get_method("hisp")(problem)
    ranking = [row["component"] for row in result.tables["ranking.csv"]]
    assert set(ranking[:4]) == {"m0", "m1", "m2", "a3.h0<v>"}
    # components that write nothing (the empty heads of layers 1 and 2, m3) score exactly 0
    scores = {row["component"]: row["importance"] for row in result.tables["ranking.csv"]}
    assert all(scores[name] == 0 for name in ("a1.h0<q>", "a2.h0<v>", "m3"))
    # every canonical edge the ranking's cuts above the rounding-level group miss belongs to a
    # component whose importance is zero up to rounding (it ties with the zeros)
    ranking = result.ranking
    above_noise = ranking.circuit(ranking.n_cuts - 2)
    canonical = ground_truth_mask(task, graph).kept
    missed = canonical & ~above_noise
    components = Components(graph)
    assert missed.any()  # (rounding decided where these fell before ties were grouped)
    for i in torch.nonzero(missed).flatten().tolist():
        edge = graph.edges[i]
        ends = [c.name for c in components.items if c.name in (edge.sender, edge.receiver, edge.name)]
        head_inputs = [c.name for c in components.items if graph.component(c.name) == edge.sender != c.name]
        assert any(scores[name] <= ranking.tolerance for name in ends) or \
            (head_inputs and all(scores[name] <= ranking.tolerance for name in head_inputs))


def test_hisp_through_the_pipeline_writes_the_curve(tmp_path):
    summary = run(config("method=hisp", "task=tracr_proportion"), tmp_path)
    assert (summary["parameter_name"], summary["curve"]) == ("k", "curve.csv")
    assert summary["method_details"]["objective"] == "answer_logit"
    assert summary["method_details"]["chosen_by"].startswith("k=auto")
    rows = list(csv.DictReader(open(tmp_path / "curve.csv")))
    assert list(rows[0]) == ["parameter", "n_edges", "n_edges_unpruned", "fraction", "edge_tpr", "edge_fpr",
                             "node_tpr", "node_fpr", "metric_validation", "faithfulness_validation", "metric_test",
                             "faithfulness_test", "removed"]
    assert (float(rows[0]["edge_tpr"]), float(rows[0]["edge_fpr"])) == (1.0, 1.0)
    # the run's own circuit: measured on the validation split, the smallest measured reaching the target
    measured = [r for r in rows if r["metric_validation"]]
    own = [r for r in measured if int(r["n_edges"]) == summary["n_edges_kept"]]
    assert own and float(own[0]["faithfulness_validation"]) >= 0.8
    assert float(own[0]["metric_validation"]) == pytest.approx(summary["metric_circuit"])
    assert all(float(r["faithfulness_validation"]) < 0.8 for r in measured
               if int(r["n_edges"]) < summary["n_edges_kept"])
    # every point at MIB's fractions measured on the test split; CPR and CMD from them
    at_fractions = [r for r in rows if r["fraction"]]
    assert all(r["faithfulness_test"] for r in at_fractions)
    curve = summary["faithfulness"]["curve"]
    assert curve["split"] == "test" and len(curve["fractions"]) == len(at_fractions)


@pytest.mark.parametrize("override, message", [
    ("method.k=-1", "k must be auto, all or a non-negative integer, got -1"),
    ("method.objective=loss", "unknown HISP objective 'loss'; choose one of auto, metric, answer_logit"),
    ("method.max_points=1", "max_points must be null or an integer of at least 2, got 1"),
])
def test_bad_settings_are_refused_before_loading(override, message):
    with pytest.raises(ConfigError, match=message):
        run(config("method=hisp", override), "/nonexistent/never-written")
