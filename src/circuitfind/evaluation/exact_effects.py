"""Exact against approximate: each edge's exact single-edge effect beside its attribution score.

The exact effect of an edge is what removing it alone from the full model does to the loss,

    effect_e = L(1 - e_e) - L(1),

the quantity EAP estimates to first order (``-dL/dm_e`` at the full mask) and EAP-IG by a path
integral.  A single-edge circuit differs from the full model only in the receivers its edge feeds,
so every such run restarts from one recorded unpatched run at its edge's stage (the engine's cache,
as ACDC's edge tests do), and the edges read at one stage run as batched forwards: one engine
forward per edge in all, most of it skipped.  An edge that spans several stages (a node of
``graph=nodes``) restarts alone at its first.

``spearman`` is the Pearson correlation of average ranks (ties share their mean rank);
``top_k_overlap`` the fraction of the k edges largest in |value| that two scorings share.
"""

from __future__ import annotations

import torch

from ..methods.attribution import attribution_scores, objective_loss
from ..methods.base import Problem

# Candidate circuits per batched forward: at most this many bytes of recomputed senders.
BATCH_BYTES = 256 * 2**20


@torch.no_grad()
def single_edge_effects(problem: Problem, objective: str, split: str = "validation",
                        max_batch: int = 64, circuit: torch.Tensor | None = None,
                        edges: list[int] | None = None) -> torch.Tensor:
    """effect_e = L(circuit without edge e) - L(circuit) for every edge [n_edges] (float64), the
    circuit the full model unless ``circuit`` (a 0/1 mask) is given; only for ``edges`` where given
    (the others NaN)."""
    graph, engine = problem.graph, problem.engine(split)
    positions = problem.data(split).positions
    full = torch.ones(graph.n_edges, dtype=engine.dtype, device=engine.device) if circuit is None else \
        circuit.to(dtype=engine.dtype, device=engine.device)
    logits, cache = engine.run(full, positions, record=True)
    base = float(objective_loss(problem, logits, objective, split))
    per_candidate = graph.n_senders * cache.resid[0].numel() * cache.resid[0].element_size()
    chunk = max(1, min(max_batch, BATCH_BYTES // max(per_candidate, 1)))

    by_stage: dict[int, list[int]] = {}
    alone: list[int] = []
    for edge in (graph.edges if edges is None else [graph.edges[e] for e in edges]):
        stages = {graph.slot_stage(slot) for slot in graph.edge_slots(edge.index)}
        (by_stage.setdefault(edge.stage, []) if len(stages) == 1 else alone).append(edge.index)

    effects = torch.full((graph.n_edges,), float("nan"), dtype=torch.float64)
    for stage, edges in by_stage.items():
        for first in range(0, len(edges), chunk):
            ids = edges[first:first + chunk]
            masks = full.repeat(len(ids), 1)
            masks[torch.arange(len(ids)), torch.tensor(ids)] = 0
            if len(ids) == 1:
                batch_logits = engine.run(masks[0], positions, start_stage=stage, cache=cache)[0][None]
            else:
                batch_logits = engine.run(masks, positions, start_stage=stage, cache=cache)[0]
            for i, logits_i in zip(ids, batch_logits):
                effects[i] = float(objective_loss(problem, logits_i, objective, split)) - base
    for i in alone:
        mask = full.clone()
        mask[i] = 0
        logits_i = engine.run(mask, positions, start_stage=graph.edges[i].stage, cache=cache)[0]
        effects[i] = float(objective_loss(problem, logits_i, objective, split)) - base
    return effects


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of ``x`` (float64), tied values sharing the mean of their ranks."""
    x = x.double().flatten()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    values, inverse = torch.unique(x, return_inverse=True)
    sums = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    return (sums / counts)[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denominator if denominator > 0 else float("nan")


def top_k_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """|top-k of |a| ∩ top-k of |b|| / k (ties broken by edge order)."""
    k = min(k, len(a))
    top = lambda x: set(torch.argsort(x.abs().double(), descending=True, stable=True)[:k].tolist())  # noqa: E731
    return len(top(a) & top(b)) / k if k > 0 else float("nan")


def compare_attributions(problem: Problem, objective: str, steps: int = 5,
                         ks: tuple[int, ...] = (10,)) -> list[dict]:
    """One row per attribution method (EAP, EAP-IG with ``steps``): Spearman correlation of its
    signed scores with the exact effects, of their absolute values, and top-k overlaps."""
    exact = single_edge_effects(problem, objective)
    rows = []
    for name, scores in (("eap", attribution_scores(problem, objective)),
                         (f"eap_ig_{steps}", attribution_scores(problem, objective, steps))):
        row = dict(method=name, n_edges=problem.graph.n_edges,
                   spearman_signed=spearman(scores, exact), spearman_abs=spearman(scores.abs(), exact.abs()))
        row.update({f"top{k}_overlap": top_k_overlap(scores, exact, k) for k in ks})
        rows.append(row)
    return rows
