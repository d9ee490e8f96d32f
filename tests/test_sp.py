"""Subnetwork Probing: hard-concrete gates, gates as engine masks, the circuit rule, training."""

import csv
import math

import pytest
import torch

from circuitfind.engine import gather_positions
from circuitfind.evaluation.rates import edge_and_node_rates
from circuitfind.tasks.ground_truth import ground_truth_mask
from circuitfind.core.graph import Architecture, Graph
from circuitfind.methods import Problem, get_method
from circuitfind.methods.components import Components
from circuitfind.methods.sp import HardConcrete
from circuitfind.methods.specs.sp import check_sp_params
from circuitfind.core.metrics import KL
from circuitfind.runs.pipeline import ConfigError, run
from circuitfind.tasks import TaskData, build_task
from circuitfind.tasks.base import Task

from conftest import config, tiny_model


def random_problem(model, corruption="corrupted", granularity="qkv", batch=5, seq=6, seed=0) -> Problem:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, model.cfg.d_vocab, (batch, seq), generator=g)
    corrupted = torch.randint(0, model.cfg.d_vocab, (batch, seq), generator=g)
    data = TaskData(clean, corrupted, torch.tensor([[seq - 2, seq - 1]] * batch))
    task = Task("random", model, data, data, {"kl": KL}, "kl")
    return Problem(task, Graph(Architecture.from_config(model.cfg), granularity), corruption, KL, progress=False)


def tracr_problem(name="tracr_reverse", corruption="zero"):
    task = build_task(name, seed=0)
    graph = Graph(Architecture.from_config(task.model.cfg, split_embed=True))
    return Problem(task, graph, corruption, task.metric(None), progress=False)


# ---- the hard-concrete distribution ---------------------------------------------------------
def test_hard_concrete_starts_at_the_papers_initial_gate_and_samples_in_the_unit_interval():
    hc = HardConcrete()
    log_alpha = torch.full((20000,), hc.initial_log_alpha(0.9), dtype=torch.float64)
    assert hc.test_gate(log_alpha)[0].item() == pytest.approx(0.9)
    z = hc.sample(log_alpha, torch.rand(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert z.min() >= 0 and z.max() <= 1
    # P(z > 0) by sampling agrees with the closed form the penalty uses; some samples clip to exactly 1
    assert (z > 0).double().mean().item() == pytest.approx(hc.prob_open(log_alpha)[0].item(), abs=0.01)
    assert (z == 1).any() and (z == 0).any()
    # log-alpha = 0 is the boundary: test-time gate exactly 1/2
    assert hc.test_gate(torch.zeros(1)).item() == pytest.approx(0.5)


# ---- gates are what SP says they are ---------------------------------------------------------
def hooked_gated_logits(problem: Problem, components: Components, gates: torch.Tensor) -> torch.Tensor:
    """The gated model the slow way: TransformerLens hooks mixing each gated activation with the
    corrupted run's, ``z * clean + (1 - z) * corrupted``."""
    model, data = problem.task.model, problem.data("validation")
    _, corrupted_cache = model.run_with_cache(data.corrupted)

    def gate(act, hook, index, head):
        z = gates[index]
        ablated = corrupted_cache[hook.name]
        if head is None:
            return z * act + (1 - z) * ablated
        act = act.clone()
        act[:, :, head] = z * act[:, :, head] + (1 - z) * ablated[:, :, head]
        return act

    hooks = []
    for i, c in enumerate(components.items):
        name = f"blocks.{c.layer}.hook_mlp_out" if c.kind == "mlp" else f"blocks.{c.layer}.attn.hook_{c.kind}"
        hooks.append((name, lambda act, hook, i=i, head=c.head: gate(act, hook, i, head)))
    logits = model.run_with_hooks(data.clean, fwd_hooks=hooks)
    return gather_positions(logits, data.positions)


@pytest.mark.parametrize("attn_only", [False, True])
def test_component_gates_on_the_engine_equal_gating_activations_with_hooks(attn_only):
    model = tiny_model(n_layers=2, n_heads=3, d_model=24, attn_only=attn_only)
    problem = random_problem(model)
    components = Components(problem.graph)
    assert len(components) == 2 * 3 * 3 + (0 if attn_only else 2)
    gates = torch.rand(len(components), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    engine_logits = problem.engine().logits(components.edge_mask_values(gates), problem.data("validation").positions)
    torch.testing.assert_close(engine_logits, hooked_gated_logits(problem, components, gates), rtol=1e-9, atol=1e-9)


# ---- from kept components to a circuit ------------------------------------------------------
def test_the_circuit_keeps_exactly_the_edges_between_kept_nodes():
    model = tiny_model(n_layers=2, n_heads=2, d_model=16)
    graph = Graph(Architecture.from_config(model.cfg))
    components = Components(graph)
    keep = torch.ones(len(components), dtype=torch.bool)
    assert components.circuit(keep).n_kept == graph.n_edges

    removed = {"a0.h0<q>", "a1.h1<q>", "a1.h1<k>", "a1.h1<v>", "m0"}
    for name in removed:
        keep[components.index[name]] = False
    kept = set(components.circuit(keep).kept_names())
    dead_nodes = removed | {"a1.h1"}  # all three inputs gone: the head's output goes too
    expected = {e.name for e in graph.edges if e.sender not in dead_nodes and e.receiver not in dead_nodes}
    assert kept == expected
    assert "a0.h0<k>" in kept and "a0.h0->m0" not in kept and "a0.h0->a1.h0<q>" in kept  # a0.h0 lives on k, v
    assert not any(e.startswith("m0->") or e.endswith("->m0") for e in kept)
    assert not any(e.startswith("a1.h1->") for e in kept) and "embed->a0.h0<q>" not in kept


def test_edge_scores_agree_with_the_circuit_at_every_component_threshold():
    graph = Graph(Architecture.from_config(tiny_model(n_layers=3, n_heads=2, d_model=16).cfg))
    components = Components(graph)
    scores = torch.rand(len(components), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    edge_scores = components.edge_scores(scores)
    for threshold in scores.tolist():
        assert torch.equal(components.circuit(scores >= threshold).kept, edge_scores >= threshold)


@pytest.mark.parametrize("granularity", ["heads", "nodes"])
def test_coarser_graphs_gate_head_outputs(granularity):
    model = tiny_model(n_layers=2, n_heads=2, d_model=16)
    graph = Graph(Architecture.from_config(model.cfg), granularity)
    components = Components(graph)
    assert components.names == ["a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1"]
    keep = torch.ones(len(components), dtype=torch.bool)
    keep[components.index["a0.h1"]] = False
    kept = set(components.circuit(keep).kept_names())
    assert not any("a0.h1" in name for name in kept)
    assert len(kept) == graph.n_edges - sum("a0.h1" in e.name for e in graph.edges)
    # SP learns one gate per component, and its circuit is exactly the components whose gates stay open
    result = get_method("sp")(random_problem(model, granularity=granularity), lambda_reg=1.0, epochs=3)
    gates = result.tables["gates.csv"]
    assert [row["gate"] for row in gates] == components.names
    open_gates = torch.tensor([row["log_alpha"] > 0 for row in gates])
    assert torch.equal(result.circuit.kept, components.circuit(open_gates).kept)


# ---- training -------------------------------------------------------------------------------
def test_sp_finds_the_tracr_reverse_components_and_a_large_lambda_closes_every_gate():
    """A higher learning rate than the paper's so that a few hundred steps suffice for a unit test."""
    problem = tracr_problem()
    small = get_method("sp")(problem, lambda_reg=0.01, epochs=500, lr=0.01)
    gates = {row["gate"]: row["kept"] for row in small.tables["gates.csv"]}
    assert {g for g, kept in gates.items() if kept} == {"a0.h0<v>", "m0", "m1", "m2", "a3.h0<q>", "a3.h0<k>", "a3.h0<v>"}
    rates = edge_and_node_rates(small.circuit, ground_truth_mask(problem.task, problem.graph))
    assert rates["edge_tpr"] == 1.0 and rates["node_tpr"] == 1.0 and rates["node_fpr"] == 0.0
    assert 0 < rates["edge_fpr"] < 0.5  # every edge between kept nodes: also non-canonical ones
    # each edge scores its gates' open probability
    assert small.scores.min() >= 0 and small.scores.max() <= 1
    assert torch.equal(small.circuit.kept, small.scores > HardConcrete().prob_open(torch.zeros(1)).item())

    large = get_method("sp")(problem, lambda_reg=100.0, epochs=300, lr=0.01)
    assert large.details["n_gates_kept"] == 0
    assert set(large.circuit.kept_names()) == {"tok_embed->resid_post", "pos_embed->resid_post"}
    log = large.tables["training.csv"]
    assert log[0]["step"] == 0 and log[-1]["step"] == 299 and log[-1]["expected_open"] < log[0]["expected_open"]


def test_sp_is_seeded():
    model = tiny_model(n_layers=2, n_heads=2, d_model=16)
    a = get_method("sp")(random_problem(model), lambda_reg=0.5, epochs=30, lr=0.05, seed=3)
    b = get_method("sp")(random_problem(model), lambda_reg=0.5, epochs=30, lr=0.05, seed=3)
    c = get_method("sp")(random_problem(model), lambda_reg=0.5, epochs=30, lr=0.05, seed=4)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.circuit.kept, b.circuit.kept)
    assert not torch.equal(a.scores, c.scores)


def test_edge_level_gates_train_one_gate_per_edge():
    model = tiny_model(n_layers=2, n_heads=2, d_model=16)
    problem = random_problem(model)
    result = get_method("sp")(problem, lambda_reg=2.0, epochs=200, lr=0.05, gates="edges")
    assert result.details["n_gates"] == problem.graph.n_edges == len(result.tables["gates.csv"])
    kept = [row["kept"] for row in result.tables["gates.csv"]]
    assert result.circuit.kept.tolist() == kept and 0 < sum(kept) < len(kept)
    assert result.label == "sp_edges"  # the report draws it as its own method


@pytest.mark.parametrize("params, message", [
    (dict(lambda_reg=-1), "lambda_reg must be a non-negative number, got -1"),
    (dict(lambda_reg="big"), "lambda_reg must be a non-negative number"),
    (dict(epochs=2.5), "epochs must be a non-negative integer, got 2.5"),
    (dict(lr=0), "lr must be a positive number, got 0"),
    (dict(gates="heads"), "unknown SP gate level 'heads'; choose one of components, edges"),
    (dict(init_open=1.0), "init_open must lie strictly between 0 and 1"),
    (dict(log_every=0), "log_every must be a positive integer, got 0"),
])
def test_bad_settings_get_one_line_errors(params, message):
    full = dict(dict(lambda_reg=1.0, epochs=10, lr=0.001), **params)
    with pytest.raises(ValueError, match=message):
        check_sp_params(**full)
    with pytest.raises(ConfigError, match=message):
        run(config("method=sp", *(f"method.{k}={v}" for k, v in params.items())), "/nonexistent/never-written")


def test_sp_through_the_pipeline_writes_its_tables_and_parameter(tmp_path):
    summary = run(config("method=sp", "method.epochs=20", "method.lambda_reg=2"), tmp_path)
    assert (summary["method"], summary["parameter_name"], summary["parameter"]) == ("sp", "lambda_reg", 2)
    assert summary["tau"] is None and summary["method_details"]["epochs"] == 20 and summary["method_label"] == "sp"
    training = list(csv.DictReader(open(tmp_path / "training.csv")))
    assert list(training[0]) == ["step", "loss", "task_loss", "expected_open", "n_open"] and len(training) == 3
    gates = list(csv.DictReader(open(tmp_path / "gates.csv")))
    assert len(gates) == 16 and all(math.isfinite(float(g["log_alpha"])) for g in gates)
