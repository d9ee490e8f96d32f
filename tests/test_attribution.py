"""EAP and EAP-IG: the engine's gradient against finite differences, EAP against a hook reference,
EAP-IG's completeness, and both methods through the pipeline."""

import csv
import json
import re

import pytest
import torch

from circuitfind.methods import Problem, get_method
from circuitfind.methods.attribution import attribution_scores, objective_loss
from circuitfind.core.metrics import KL, Metric
from circuitfind.runs.pipeline import ConfigError, run
from circuitfind.engine.reference_attribution import eap_reference

import conftest
from conftest import answer_gap, config, tiny_model


GAP = Metric("gap", answer_gap, lower_is_better=False)


def random_problem(model, corruption, granularity="qkv", metric=GAP, batch=3, seq=5, seed=0) -> Problem:
    return conftest.random_problem(model, corruption, granularity, metric, batch, seq, seed)


def engine_loss(problem: Problem, metric_name: str):
    """The engine's loss as a function of a float mask: KL (a divergence) or GAP (linear in logits)."""
    engine, positions = problem.engine(), problem.data("validation").positions

    def loss(mask):
        return problem.loss(engine.run(mask, positions)[0])
    return loss


@pytest.mark.parametrize("granularity", ["qkv", "heads", "nodes"])
@pytest.mark.parametrize("corruption", ["zero", "corrupted", "mean"])
@pytest.mark.parametrize("where", ["full", "fractional"])
def test_engine_gradient_matches_central_finite_differences(granularity, corruption, where):
    """torch.autograd.gradcheck (central differences, float64) of the engine's loss in the mask: at
    the full mask (where EAP differentiates: every receiver must be read through its mask row even
    though nothing is removed) and at a random fractional mask (SP, EAP-IG)."""
    model = tiny_model(n_layers=2, n_heads=2, d_model=8, attn_only=granularity == "heads")
    problem = random_problem(model, corruption, granularity, metric=KL if where == "fractional" else GAP)
    n = problem.graph.n_edges
    g = torch.Generator().manual_seed(1)
    values = torch.ones(n) if where == "full" else 0.1 + 0.8 * torch.rand(n, generator=g)
    mask = values.double().requires_grad_(True)
    loss = engine_loss(problem, problem.metric.name)
    assert torch.autograd.gradcheck(loss, (mask,), eps=1e-6, atol=1e-8, rtol=1e-5)
    (grad,) = torch.autograd.grad(loss(mask), mask)
    assert grad.abs().max() > 1e-4  # a gradient that is there, not a vacuous pass


@pytest.mark.parametrize("granularity, corruption, attn_only", [
    ("qkv", "corrupted", False), ("qkv", "zero", True), ("qkv", "mean", False),
    ("heads", "corrupted", False), ("heads", "zero", False), ("nodes", "corrupted", False), ("nodes", "mean", True),
])
def test_eap_matches_the_hook_reference(granularity, corruption, attn_only):
    assert_eap_matches_reference(tiny_model(n_layers=2, n_heads=3, d_model=12, attn_only=attn_only),
                                 corruption, granularity)


def assert_eap_matches_reference(model, corruption: str, granularity: str) -> None:
    problem = random_problem(model, corruption, granularity)
    data = problem.data("validation")
    fast = attribution_scores(problem, "metric")
    slow = eap_reference(model, problem.graph, data.clean, data.corrupted, data.positions, corruption,
                         lambda logits: problem.loss(logits))
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)
    assert slow.abs().max() > 1e-3


@pytest.mark.parametrize("granularity, corruption", [("qkv", "corrupted"), ("heads", "zero"), ("nodes", "mean")])
def test_eap_matches_the_hook_reference_through_gemma_2_post_norms(granularity, corruption):
    """A head's edge reaches its receiver through its layer's ln1_post: the reference multiplies by
    that norm's Jacobian (the family without grouped-query attention, which the reference lacks)."""
    from families import family_model

    assert_eap_matches_reference(family_model("gemma2", n_key_value_heads=None), corruption, granularity)


def test_eap_matches_the_hook_reference_on_tracr_with_split_embeddings():
    # zero ablation: main's tracr corruption now shuffles the corrupted run's positions, which the
    # reference does not model yet
    problem = _tracr_problem("tracr_reverse", "zero")
    data = problem.data("validation")
    fast = attribution_scores(problem, "answer_logit")
    slow = eap_reference(problem.task.model, problem.graph, data.clean, data.corrupted, data.positions,
                         "zero", lambda logits: objective_loss(problem, logits, "answer_logit"))
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)


def _tracr_problem(task, corruption, granularity="qkv"):
    from circuitfind.runs.pipeline import build_problem
    return build_problem(config(f"task={task}", f"corruption={corruption}", f"graph={granularity}"))


@pytest.mark.parametrize("corruption, ig", [("corrupted", "masks"), ("zero", "masks"), ("corrupted", "inputs")])
def test_eap_ig_is_complete(corruption, ig):
    """The signed EAP-IG scores add up to loss(everything removed) - loss(nothing removed) as the
    number of steps grows (the midpoint rule: the error shrinks like 1/steps^2 once the grid resolves the path).  Along the inputs
    path only the embedding edges span it."""
    model = tiny_model(n_layers=2, n_heads=2, d_model=12)
    problem = random_problem(model, corruption, metric=KL)
    engine, positions = problem.engine(), problem.data("validation").positions
    n = problem.graph.n_edges
    nothing, everything = (float(problem.loss(engine.logits(torch.full((n,), v, dtype=torch.float64), positions)))
                           for v in (1.0, 0.0))
    target = everything - nothing
    assert target > 1e-2
    from circuitfind.methods.attribution import embedding_edges
    on_path = torch.ones(n, dtype=torch.bool) if ig == "masks" else embedding_edges(problem)
    errors = [abs(float(attribution_scores(problem, "metric", steps, ig)[on_path].sum()) - target)
              for steps in (4, 16, 64)]
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 2e-3 * target
    eap = attribution_scores(problem, "metric")  # KL's gradient at the full model: zero
    assert eap.abs().max() < 1e-8


@pytest.mark.parametrize("method", ["eap", "eap_ig"])
@pytest.mark.parametrize("corruption", ["zero", "corrupted"])
def test_pipeline_writes_scores_and_the_whole_curve(tmp_path, method, corruption):
    summary = run(config("task=tracr_proportion", f"method={method}", f"corruption={corruption}"), tmp_path)
    assert summary["parameter_name"] == "k" and summary["curve"] == "curve.csv"
    with open(tmp_path / "curve.csv") as f:
        curve = list(csv.DictReader(f))
    fractions = [row for row in curve if row["fraction"]]
    roc = [row for row in curve if not row["fraction"] and not row["metric_validation"]]  # rates only
    # the curve at MIB's fractions (repeated cuts once), then every cut between tie groups
    assert float(fractions[0]["fraction"]) == 1.0 and float(fractions[0]["faithfulness_validation"]) == 1.0
    assert all(int(r["n_edges"]) <= int(r["n_edges_unpruned"]) <= float(r["fraction"]) * 38 for r in fractions)
    assert float(roc[0]["edge_tpr"]) == 0.0 and float(roc[-1]["edge_tpr"]) == 1.0
    assert int(roc[-1]["n_edges_unpruned"]) == 38
    faithful = summary["faithfulness"]
    assert faithful["curve"]["cpr"] <= 0.999 + 1e-9 or max(faithful["curve"]["faithfulness"]) > 1
    with open(tmp_path / "edges.csv") as f:
        edges = list(csv.DictReader(f))
    scores = [float(e["score"]) for e in edges]
    assert len(edges) == 38 and min(scores) >= 0 and max(scores) > 0  # absolute by default
    details = json.loads((tmp_path / "summary.json").read_text())["method_details"]
    assert details["objective"] == "answer_logit" and details["n_backward"] == (5 if method == "eap_ig" else 1)


def test_signed_scores_and_k():
    problem = _tracr_problem("tracr_reverse", "zero")
    signed = get_method("eap")(problem, absolute=False, k=7, pruned=False)
    assert (signed.scores < 0).any() and signed.circuit.n_kept <= 7
    # the top tie groups that fit in 7 edges: each kept edge outscores every other
    kept = signed.circuit.kept
    assert signed.scores[kept].min() > signed.scores[~kept].max()
    assert "k=7" in signed.details["chosen_by"]


@pytest.mark.parametrize("override, message", [
    ("method.steps=0", "steps must be a positive integer, got 0"),
    ("method.absolute=maybe", "absolute must be true or false, got 'maybe'"),
    ("method.ig=outputs", "unknown ig path 'outputs'; choose one of masks, inputs"),
    ("method.k=-1", "k must be auto, all or a non-negative integer, got -1"),
    ("method.objective=loss", "unknown objective 'loss'; choose one of auto, metric, answer_logit"),
    ("method.max_points=1", "max_points must be null or an integer of at least 2, got 1")])
def test_bad_parameters_are_refused_before_loading(tmp_path, override, message, monkeypatch):
    from circuitfind.runs import pipeline

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(pipeline, "build_problem", no_model)
    with pytest.raises(ConfigError, match=re.escape(message)):
        run(config("method=eap_ig", override), tmp_path)


def test_eap_refuses_a_divergence_objective(tmp_path):
    with pytest.raises(ValueError, match="divergence"):
        run(config("method=eap", "method.objective=metric"), tmp_path)


def test_report_lists_eap_and_eap_ig(tmp_path):
    import pandas as pd

    from circuitfind.methods.spec import method_labels
    from circuitfind.report import report
    for method in ("eap", "eap_ig"):
        run(config("task=tracr_proportion", f"method={method}", "corruption=zero"), tmp_path / method)
    report([tmp_path], tmp_path)
    aucs = pd.read_csv(tmp_path / "auc.csv")
    edge = aucs[aucs.level == "edge"].set_index("method").auc
    assert set(edge.index) == {"eap", "eap_ig"} and edge["eap_ig"] > 0.5
    # EAP under zero ablation scores 4 of the 10 canonical edges above rounding and the rest tie with
    # every other edge: the staircase (0, 0) -> (0, 0.4) -> (1, 1) has area 0.4
    assert edge["eap"] == pytest.approx(0.4)
    assert method_labels()["eap_ig"] == "EAP-IG"
    from circuitfind.report import task_roc_figure
    from circuitfind.runs.points import collect_points

    edge_panel = task_roc_figure("tracr_proportion", collect_points(sorted(p.parent for p in tmp_path.rglob("summary.json")))).axes[0]
    assert [t.get_text() for t in edge_panel.get_legend().get_texts()] == [
        f"EAP (AUC {edge['eap']:.2f})", f"EAP-IG (AUC {edge['eap_ig']:.2f})"]  # what roc_tracr_proportion.png shows
