"""The run's circuit on both splits: what the curve measured is not run again, and the rest comes from
the nodes-only forward with the full forward's numbers."""

import pytest
import torch

from circuitfind.core.graph import Architecture, EdgeMask, Graph
from circuitfind.core.metrics import KL
from circuitfind.methods import Problem, get_method
from circuitfind.runs import pipeline
from circuitfind.tasks import TaskData
from circuitfind.tasks.base import Task

from conftest import tiny_model


def two_split_problem(corruption: str, seed: int = 0) -> Problem:
    """Random prompts, different on the validation and the test split (so a metric taken from the
    wrong split shows)."""
    model = tiny_model(n_layers=2, n_heads=3, seed=seed)
    g = torch.Generator().manual_seed(seed)

    def data(batch=4, seq=6):
        clean = torch.randint(0, model.cfg.d_vocab, (batch, seq), generator=g)
        corrupted = torch.randint(0, model.cfg.d_vocab, (batch, seq), generator=g)
        return TaskData(clean, corrupted, torch.tensor([[seq - 2, seq - 1]] * batch))

    task = Task("random", model, data(), data(), {KL.name: KL}, KL.name)
    return Problem(task, Graph(Architecture.from_config(model.cfg), "qkv"), corruption, KL, progress=False)


def full_forward_metrics(problem: Problem, circuit: EdgeMask) -> dict:
    """The slow way: every number from a full patched forward."""
    nothing = EdgeMask(problem.graph, torch.zeros(problem.graph.n_edges))
    everything = EdgeMask(problem.graph, torch.ones(problem.graph.n_edges))
    return {split: dict(metric_full=problem.evaluate(everything, split), metric_circuit=problem.evaluate(circuit, split),
                        metric_empty=problem.evaluate(nothing, split)) for split in ("validation", "test")}


def assert_close(got: dict, want: dict) -> None:
    for split in want:
        for key in want[split]:
            assert got[split][key] == pytest.approx(want[split][key], rel=1e-9, abs=1e-12), (split, key)


# k=auto's circuit at one of MIB's fractions (measured on both splits by the curve), and one that
# k=auto bisected to (measured on the validation split only)
@pytest.mark.parametrize("corruption, target, on_test", [("corrupted", 0.5, True), ("corrupted", 0.7, False),
                                                         ("zero", 0.3, True)])
def test_k_auto_circuit_is_not_run_again_and_matches_full_forwards(corruption, target, on_test):
    problem = two_split_problem(corruption, seed=1)
    result = get_method("eap")(problem, objective="answer_logit", target=target)
    curve = pipeline._evaluate_curve(problem, None, result)
    measured = pipeline._measured(result, curve)
    assert "validation" in measured  # k=auto measured its circuit on the validation split
    chosen = [p for p in result.curve if torch.equal(p.circuit.values.float(), result.circuit.values.float())]
    assert ("test" in measured) == any(p.fraction is not None for p in chosen) == on_test
    before = sum(problem.engine(split).n_forward for split in ("validation", "test"))
    metrics = pipeline._split_metrics(problem, result.circuit, measured)
    after = sum(problem.engine(split).n_forward for split in ("validation", "test"))
    assert after - before == 2 - len(measured)  # one forward for each split the curve did not measure
    want = full_forward_metrics(problem, result.circuit)
    assert want["validation"]["metric_circuit"] != pytest.approx(want["test"]["metric_circuit"])
    assert_close(metrics, want)


@pytest.mark.parametrize("corruption", ["corrupted", "zero", "mean"])
def test_any_circuit_by_its_needed_nodes_matches_full_forwards(corruption):
    problem = two_split_problem(corruption, seed=1)
    n = problem.graph.n_edges
    g = torch.Generator().manual_seed(2)
    for values in (torch.rand(n, generator=g) < 0.5, torch.rand(n, generator=g, dtype=torch.float64),
                   torch.ones(n), torch.zeros(n)):
        circuit = EdgeMask(problem.graph, values)
        assert_close(pipeline._split_metrics(problem, circuit), full_forward_metrics(problem, circuit))
