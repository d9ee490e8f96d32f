"""ACDC: ground truth on tracr, and the fast engine against the slow hook reference."""

import math
from dataclasses import dataclass

import pytest
import torch

from circuitfind.evaluation.rates import edge_and_node_rates
from circuitfind.tasks.ground_truth import ground_truth_mask
from circuitfind.core.graph import Architecture, EdgeMask, Graph
from circuitfind.methods import Problem, get_method
from circuitfind.methods.acdc import Step, candidate_masks
from circuitfind.core.metrics import KL
from circuitfind.engine.reference import reference_ablation, reference_logits
from circuitfind.tasks import TaskData, build_task
from circuitfind.tasks.base import Task

from conftest import tiny_model


def tracr_problem(name, corruption="zero", granularity="qkv", shuffle_positions=False, **task_params):
    task = build_task(name, seed=0, **task_params)
    graph = Graph(Architecture.from_config(task.model.cfg, split_embed=True), granularity)
    return Problem(task, graph, corruption, task.metric(None), progress=False, shuffle_positions=shuffle_positions)


def test_tracr_reverse_zero_ablation_recovers_exactly_the_canonical_circuit():
    problem = tracr_problem("tracr_reverse")
    result = get_method("acdc")(problem, tau=0.001)
    canonical = ground_truth_mask(problem.task, problem.graph)
    assert problem.graph.n_edges == 106 and canonical.n_kept == 15
    assert sorted(result.circuit.kept_names()) == sorted(canonical.kept_names())
    assert edge_and_node_rates(result.circuit, canonical) == dict(edge_tpr=1.0, edge_fpr=0.0, node_tpr=1.0, node_fpr=0.0)


def test_tracr_proportion_zero_ablation_on_the_papers_prompts_recovers_exactly_the_canonical_circuit():
    problem = tracr_problem("tracr_proportion", data="paper")
    result = get_method("acdc")(problem, tau=0.001)
    canonical = ground_truth_mask(problem.task, problem.graph)
    assert problem.graph.n_edges == 38 and canonical.n_kept == 10
    assert sorted(result.circuit.kept_names()) == sorted(canonical.kept_names())


@pytest.mark.parametrize("name, n_canonical, tpr", [("tracr_reverse", 15, 0.6), ("tracr_proportion", 10, 0.9)])
def test_tracr_interchange_ablation_with_shuffled_positions_keeps_nine_canonical_edges(name, n_canonical, tpr):
    """As the reference implementation: the corrupted run's positions shuffled, tau 0.001."""
    problem = tracr_problem(name, corruption="corrupted", shuffle_positions=True)
    result = get_method("acdc")(problem, tau=0.001)
    canonical = ground_truth_mask(problem.task, problem.graph)
    assert canonical.n_kept == n_canonical and result.circuit.n_kept == 9
    assert set(result.circuit.kept_names()) <= set(canonical.kept_names())
    rates = edge_and_node_rates(result.circuit, canonical)
    assert (rates["edge_tpr"], rates["edge_fpr"]) == (pytest.approx(tpr), 0.0)


def test_tracr_proportion_on_valid_prompts_cannot_see_the_bos_default():
    """With BOS first in every prompt, each query matches itself, so the BOS default read through
    tok_embed -> q/k never changes the output (delta exactly 0): 8 of the 10 canonical edges."""
    problem = tracr_problem("tracr_proportion", data="valid")
    result = get_method("acdc")(problem, tau=0.001)
    canonical = ground_truth_mask(problem.task, problem.graph)
    missing = set(canonical.kept_names()) - set(result.circuit.kept_names())
    assert set(result.circuit.kept_names()) <= set(canonical.kept_names())
    assert missing == {"tok_embed->a1.h0<q>", "tok_embed->a1.h0<k>"}
    assert all(result.scores[problem.graph.edge_index[name]] == 0 for name in missing)


def random_task(model, batch=6, seq=5, seed=0) -> Task:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, model.cfg.d_vocab, (batch, seq), generator=g)
    corrupted = torch.randint(0, model.cfg.d_vocab, (batch, seq), generator=g)
    positions = torch.tensor([[seq - 2, seq - 1]] * batch)
    data = TaskData(clean, corrupted, positions)
    return Task("random", model, data, data, {"kl": KL}, "kl")


@dataclass
class ReferenceACDC:
    kept: list[str]  # kept edge names, in edge order
    scores: torch.Tensor  # delta of each tested edge; -inf dropped untested, +inf never reached
    trace: list[tuple[str, float, bool]]  # (edge, delta, kept) per test, in order


def reference_acdc(problem: Problem, tau: float, abs_delta: bool = False) -> ReferenceACDC:
    """Algorithm 1 of Conmy et al., written out again here and sharing no code with
    ``methods/acdc.py``: every edge test is one full forward through TransformerLens hooks, edges in
    the order the graph numbers them, a visit per run of consecutive edges into one receiver."""
    task, graph = problem.task, problem.graph
    data = task.validation
    ablated = reference_ablation(task.model, data.corrupted, problem.corruption)
    index = data.positions.unsqueeze(-1).expand(-1, -1, task.model.cfg.d_vocab)

    def loss(values: torch.Tensor) -> float:
        logits = reference_logits(task.model, graph, data.clean, ablated, EdgeMask(graph, values.clone()))
        return float(problem.loss(logits.gather(1, index)))

    mask = torch.ones(graph.n_edges, dtype=torch.float64)
    scores = torch.full((graph.n_edges,), math.inf, dtype=torch.float64)
    trace = []
    current = loss(mask)
    visits: list[tuple[str, list[int]]] = []
    for edge in graph.edges:
        if visits and visits[-1][0] == edge.receiver:
            visits[-1][1].append(edge.index)
        else:
            visits.append((edge.receiver, [edge.index]))
    for receiver, incoming in visits:
        feeds = receiver == "resid_post" or graph.granularity == "nodes" or \
            any(mask[e] == 1 for e in graph.outgoing[receiver])
        if not feeds:  # its inputs cannot matter
            for e in incoming:
                mask[e], scores[e] = 0, -math.inf
            continue
        for e in incoming:
            mask[e] = 0
            candidate = loss(mask)
            delta = candidate - current
            if (abs(delta) if abs_delta else delta) < tau:
                current = candidate
            else:
                mask[e] = 1
            scores[e] = delta
            trace.append((graph.edges[e].name, delta, bool(mask[e] == 1)))
    return ReferenceACDC([graph.edges[e].name for e in range(graph.n_edges) if mask[e] == 1], scores, trace)


def typical_single_edge_effect(problem: Problem, quantile: float = 0.3) -> float:
    """A tau in the middle of the edges' effects, so that ACDC keeps some edges and drops others."""
    effects = []
    for e in range(problem.graph.n_edges):
        mask = torch.ones(problem.graph.n_edges, dtype=torch.float64)
        mask[e] = 0
        effects.append(problem.evaluate(mask))
    return float(torch.tensor(effects).quantile(quantile))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("granularity, corruption", [("qkv", "corrupted"), ("heads", "zero"), ("nodes", "corrupted")])
def test_fast_acdc_keeps_the_same_edges_as_the_slow_reference(seed, granularity, corruption):
    model = tiny_model(n_layers=3, n_heads=2, d_model=16, seed=seed)
    task = random_task(model, seed=seed)
    graph = Graph(Architecture.from_config(model.cfg), granularity)
    problem = Problem(task, graph, corruption, KL, progress=False)
    tau = typical_single_edge_effect(problem)
    fast = get_method("acdc")(problem, tau=tau)
    slow = reference_acdc(problem, tau=tau)
    assert 0 < fast.circuit.n_kept < graph.n_edges  # a real mix of kept and removed edges
    assert fast.circuit.kept_names() == slow.kept
    finite = torch.isfinite(slow.scores)
    assert torch.equal(finite, torch.isfinite(fast.scores))
    torch.testing.assert_close(fast.scores[finite], slow.scores[finite], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("granularity, corruption, quantile", [
    ("qkv", "corrupted", 0.3), ("heads", "zero", 0.3), ("qkv", "mean", 0.3), ("qkv", "corrupted", 0.9)])
def test_batched_edge_tests_take_exactly_the_sequential_decisions(seed, granularity, corruption, quantile):
    """Few edges kept (quantile 0.9) makes plain batches win, many (0.3) speculative ones."""
    model = tiny_model(n_layers=3, n_heads=2, d_model=16, seed=seed)
    problem = Problem(random_task(model, seed=seed), Graph(Architecture.from_config(model.cfg), granularity),
                      corruption, KL, progress=False)
    tau = typical_single_edge_effect(problem, quantile)
    sequential = get_method("acdc")(problem, tau=tau, batch_edges=1)
    assert sequential.details["n_test_forwards"] == len(sequential.trace)
    for batch_edges in (2, 3, 64):
        batched = get_method("acdc")(problem, tau=tau, batch_edges=batch_edges)
        assert batched.circuit.kept_names() == sequential.circuit.kept_names()
        assert [(r["edge"], r["kept"]) for r in batched.trace] == \
               [(r["edge"], r["kept"]) for r in sequential.trace]
        torch.testing.assert_close(batched.scores, sequential.scores, rtol=0, atol=1e-12)
        assert batched.details["n_test_forwards"] < sequential.details["n_test_forwards"]


def test_candidate_masks_are_the_circuits_of_the_next_tests():
    before = torch.ones(8)
    before[7] = 0  # decided earlier
    steps = [Step(0, []), Step(1, []), Step(4, [2, 3]), Step(5, [])]  # edges 2, 3 dropped before edge 4's test
    plain = candidate_masks(before, steps, n_candidates=4, keep_rate=0.01)
    expected = [[0, 1, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0, 1, 0]]
    assert plain.tolist() == expected
    speculative = candidate_masks(before, steps, n_candidates=6, keep_rate=0.5)  # 3 tests, 6 circuits
    assert speculative.tolist() == expected[:3] + [
        [1, 0, 1, 1, 1, 1, 1, 0],  # edge 0 kept, then edge 1 tested
        [1, 0, 0, 0, 0, 1, 1, 0],  # edge 0 kept, 1 removed, 4 tested
        [0, 1, 0, 0, 0, 1, 1, 0],  # edge 1 kept, 4 tested
    ]


@pytest.mark.parametrize("name", ["tracr_reverse", "tracr_proportion"])
def test_batched_acdc_on_tracr_keeps_the_same_edges(name):
    problem = tracr_problem(name)
    sequential = get_method("acdc")(problem, tau=0.001, batch_edges=1)
    batched = get_method("acdc")(problem, tau=0.001, batch_edges=16)
    assert batched.circuit.kept_names() == sequential.circuit.kept_names()
    assert [r["edge"] for r in batched.trace] == [r["edge"] for r in sequential.trace]


@pytest.mark.parametrize("batch_edges", [0, -2, 1.5, "many", True])
def test_batch_edges_must_be_a_positive_integer_or_auto(batch_edges):
    with pytest.raises(ValueError, match="batch_edges must be a positive integer or auto"):
        get_method("acdc")(tracr_problem("tracr_reverse"), tau=0.01, batch_edges=batch_edges)


def test_receivers_that_feed_nothing_lose_their_inputs_untested():
    model = tiny_model(n_layers=2, n_heads=2, d_model=16)
    problem = Problem(random_task(model), Graph(Architecture.from_config(model.cfg)), "corrupted", KL, progress=False)
    result = get_method("acdc")(problem, tau=0.003)
    tested = {row["edge"] for row in result.trace}
    skipped = [e for e in problem.graph.edges if math.isinf(result.scores[e.index]) and result.scores[e.index] < 0]
    assert skipped, "expected some receiver to be cut off"
    for e in skipped:
        assert e.name not in tested and not result.circuit.kept[e.index]
    # no kept edge ends at a receiver that feeds nothing
    kept = set(result.circuit.kept_names())
    for e in problem.graph.edges:
        if e.name in kept and e.receiver != "resid_post":
            assert any(problem.graph.edges[o].name in kept for o in problem.graph.outgoing[e.receiver])


@pytest.mark.parametrize("abs_delta", [False, True])
def test_each_edge_is_removed_exactly_when_its_delta_is_below_tau(abs_delta):
    """Each test's delta is the loss of the circuit without the edge minus the loss before, as the
    hook-based reference computes them, and the edge goes exactly when that is below tau."""
    model = tiny_model(n_layers=2, n_heads=2, d_model=16)
    problem = Problem(random_task(model), Graph(Architecture.from_config(model.cfg)), "corrupted", KL, progress=False)
    result = get_method("acdc")(problem, tau=0.003, abs_delta=abs_delta)
    trace = result.trace
    assert any(r["kept"] for r in trace) and any(not r["kept"] for r in trace)
    reference = reference_acdc(problem, tau=0.003, abs_delta=abs_delta)
    assert [(r["edge"], r["kept"]) for r in trace] == [(edge, kept) for edge, _, kept in reference.trace]
    torch.testing.assert_close(torch.tensor([r["delta"] for r in trace], dtype=torch.float64),
                               torch.tensor([delta for _, delta, _ in reference.trace], dtype=torch.float64),
                               rtol=1e-6, atol=1e-9)
    for r in trace:
        delta = abs(r["delta"]) if abs_delta else r["delta"]
        assert r["kept"] == (delta >= 0.003)
        assert bool(result.circuit.kept[problem.graph.edge_index[r["edge"]]]) == r["kept"]


def test_max_edge_tests_stops_early_and_marks_the_rest_untested():
    """The capped run is the uncapped run's first five tests; every other edge stays in the
    circuit, scored +inf (never reached)."""
    problem = tracr_problem("tracr_reverse")
    result = get_method("acdc")(problem, tau=0.001, max_edge_tests=5)
    uncapped = get_method("acdc")(problem, tau=0.001)
    assert [(r["edge"], r["delta"], r["kept"]) for r in result.trace] == \
           [(r["edge"], r["delta"], r["kept"]) for r in uncapped.trace[:5]]
    tested = [problem.graph.edge_index[r["edge"]] for r in result.trace]
    untested = torch.ones(problem.graph.n_edges, dtype=torch.bool)
    untested[tested] = False
    assert torch.isposinf(result.scores[untested]).all() and torch.isfinite(result.scores[tested]).all()
    removed = {r["edge"] for r in result.trace if not r["kept"]}
    assert removed and set(result.circuit.kept_names()) == {e.name for e in problem.graph.edges} - removed


@pytest.mark.parametrize("tau", [0, -1, float("nan"), "0.1", None])
def test_tau_must_be_a_positive_number(tau):
    with pytest.raises(ValueError, match="tau must be a positive number"):
        get_method("acdc")(tracr_problem("tracr_reverse"), tau=tau)


@pytest.mark.parametrize("granularity, n_edges, n_canonical", [("heads", 54, 11), ("nodes", 10, 7)])
def test_tracr_reverse_coarser_graphs_recover_the_projected_canonical_circuit(granularity, n_edges, n_canonical):
    problem = tracr_problem("tracr_reverse", granularity=granularity)
    result = get_method("acdc")(problem, tau=0.001)
    canonical = ground_truth_mask(problem.task, problem.graph)
    assert (problem.graph.n_edges, canonical.n_kept) == (n_edges, n_canonical)
    assert sorted(result.circuit.kept_names()) == sorted(canonical.kept_names())


@pytest.mark.parametrize("corruption", ["mean", "mean_all"])
def test_mean_ablation_runs_end_to_end_and_keeps_only_canonical_edges(corruption):
    problem = tracr_problem("tracr_reverse", corruption=corruption)
    result = get_method("acdc")(problem, tau=0.001)
    canonical = ground_truth_mask(problem.task, problem.graph)
    rates = edge_and_node_rates(result.circuit, canonical)
    assert rates["edge_fpr"] == 0.0 and rates["edge_tpr"] > 0


def test_one_engine_serves_acdc_then_sp():
    """What the engine keeps between runs (weights, buffers) after ACDC's gradient-free search must
    still work with autograd: one Problem, one engine, then SP's differentiable forwards, which
    train exactly as they do on a fresh engine."""
    problem = tracr_problem("tracr_reverse")
    get_method("acdc")(problem, tau=0.001)
    after_acdc = get_method("sp")(problem, lambda_reg=1.0, epochs=3)
    fresh = get_method("sp")(tracr_problem("tracr_reverse"), lambda_reg=1.0, epochs=3)
    torch.testing.assert_close(after_acdc.scores, fresh.scores, rtol=0, atol=0)
    assert after_acdc.scores.std() > 0  # the gates moved, and not all alike
