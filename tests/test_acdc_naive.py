"""An independent ACDC: Algorithm 1 written plainly over the slow hook reference, with its own
visiting order (written from the description of the reference implementation's, not read from
``Graph``), against the ACDC the pipeline runs (engine, batched tests).

The naive search runs one full hooked forward per edge test, never restarts, never batches; it
shares with circuitfind only the edge names, the hook reference and the metric.
"""

from __future__ import annotations

import pytest
import torch

from circuitfind.core.graph import Architecture, EdgeMask, Graph
from circuitfind.methods import Problem, get_method
from circuitfind.core.metrics import KL
from circuitfind.engine.reference import reference_ablation, reference_logits
from circuitfind.tasks import TaskData
from circuitfind.tasks.base import Task

from conftest import tiny_model


def naive_visits(n_layers: int, n_heads: int, has_mlps: bool, split_embed: bool) -> list[tuple[str, list[str]]]:
    """(node, the edge names tested there, in order): receivers from the output back; within a
    layer the MLP, the q/k/v nodes letter by letter (v, k, q; heads high to low), then the q/k/v
    inputs in the same order.  Senders: later layers first, MLP before heads, heads high to low,
    the token embedding, then the positional one."""
    embeds = ["tok_embed", "pos_embed"] if split_embed else ["embed"]

    def senders(last_heads: int, last_mlp: int) -> list[str]:
        out = []
        for layer in range(n_layers - 1, -1, -1):
            if has_mlps and layer <= last_mlp:
                out.append(f"m{layer}")
            if layer <= last_heads:
                out += [f"a{layer}.h{h}" for h in range(n_heads - 1, -1, -1)]
        return out + embeds

    last = n_layers - 1
    visits = [("resid_post", [f"{s}->resid_post" for s in senders(last, last)])]
    for layer in range(n_layers - 1, -1, -1):
        if has_mlps:
            visits.append((f"m{layer}", [f"{s}->m{layer}" for s in senders(layer, layer - 1)]))
        for letter in "vkq":
            for h in range(n_heads - 1, -1, -1):
                visits.append((f"a{layer}.h{h}", [f"a{layer}.h{h}<{letter}>"]))
        for letter in "vkq":
            for h in range(n_heads - 1, -1, -1):
                node = f"a{layer}.h{h}<{letter}>"
                visits.append((node, [f"{s}->{node}" for s in senders(layer - 1, layer - 1)]))
    return visits


def naive_acdc(model, graph: Graph, data: TaskData, ablated: dict, tau: float) -> set[str]:
    """Algorithm 1: the kept edge names."""
    arch = graph.arch
    visits = naive_visits(arch.n_layers, arch.n_heads, arch.has_mlps, arch.split_embed)
    assert sorted(name for _, names in visits for name in names) == sorted(e.name for e in graph.edges)
    kept = {e.name: True for e in graph.edges}
    index = data.positions.unsqueeze(-1)
    clean = model(data.clean)
    clean = clean.gather(1, index.expand(-1, -1, clean.shape[-1]))

    def loss() -> float:
        mask = EdgeMask(graph, torch.tensor([float(kept[e.name]) for e in graph.edges], dtype=torch.float64))
        logits = reference_logits(model, graph, data.clean, ablated, mask)
        return float(KL.loss(logits.gather(1, index.expand(-1, -1, logits.shape[-1])), clean))

    current = loss()
    for node, names in visits:
        feeds = [e.name for e in graph.edges if e.sender == node]
        if node != "resid_post" and not any(kept[name] for name in feeds):
            for name in names:
                kept[name] = False
            continue
        for name in names:
            kept[name] = False
            candidate = loss()
            if candidate - current < tau:
                current = candidate
            else:
                kept[name] = True
    return {name for name, k in kept.items() if k}


def random_problem(model, split_embed: bool, corruption: str, shuffle: bool, seed: int) -> Problem:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, model.cfg.d_vocab, (4, 5), generator=g)
    corrupted = torch.randint(0, model.cfg.d_vocab, (4, 5), generator=g)
    data = TaskData(clean, corrupted, torch.tensor([[3, 4]] * 4))
    task = Task("random", model, data, data, {"kl": KL}, "kl", split_embed=split_embed)
    graph = Graph(Architecture.from_config(model.cfg, split_embed=split_embed), "qkv")
    return Problem(task, graph, corruption, KL, progress=False, shuffle_positions=shuffle)


def spread_taus(problem: Problem, n: int = 5) -> list[float]:
    """Thresholds between the single-edge effects (never on one: engine and reference round
    differently), spread so that ACDC keeps from most edges to few."""
    effects = []
    for e in range(problem.graph.n_edges):
        mask = torch.ones(problem.graph.n_edges, dtype=torch.float64)
        mask[e] = 0
        effects.append(problem.evaluate(mask))
    distinct = sorted(set(x for x in effects if x > 1e-9))
    picks = torch.linspace(0.15, 0.85, n).mul(len(distinct) - 2).round().long().tolist()
    return [(distinct[i] + distinct[i + 1]) / 2 for i in picks]


# (model settings, split embeddings, shuffle positions)
MODELS = {
    "mlp": (dict(n_layers=2, n_heads=2, d_model=16, seed=0), False, False),
    "split-shuffled": (dict(n_layers=2, n_heads=2, d_model=16, seed=1), True, True),
    "attn-only-split": (dict(n_layers=3, n_heads=2, d_model=16, attn_only=True, seed=2), True, False),
}


def compare(model_kind: str, corruption: str, n_taus: int) -> None:
    settings, split, shuffle = MODELS[model_kind]
    model = tiny_model(**settings)
    problem = random_problem(model, split, corruption, shuffle and corruption != "zero", settings["seed"])
    ablated = reference_ablation(model, problem.task.validation.corrupted, corruption,
                                 shuffle_positions=problem.shuffle_positions)
    kept_counts = []
    for tau in spread_taus(problem, n_taus):
        fast = set(get_method("acdc")(problem, tau=tau).circuit.kept_names())  # the pipeline's ACDC, batched
        assert fast == naive_acdc(model, problem.graph, problem.task.validation, ablated, tau), tau
        kept_counts.append(len(fast))
    assert len(set(kept_counts)) > 1 and 0 < min(kept_counts) and max(kept_counts) < problem.graph.n_edges


def test_naive_acdc_agrees_on_a_split_shuffled_model():
    """The quick twin of the grid below."""
    compare("split-shuffled", "corrupted", n_taus=2)


@pytest.mark.slow
@pytest.mark.parametrize("corruption", ["zero", "corrupted"])
@pytest.mark.parametrize("model_kind", MODELS)
def test_naive_acdc_keeps_the_same_edges_as_the_pipelines(model_kind, corruption):
    compare(model_kind, corruption, n_taus=5)
