"""ACDC: Algorithm 1 of Conmy et al. (2023), greedy edge pruning from the output back.

    circuit <- every edge
    for each receiver, in reverse topological order (output first):
        if the receiver feeds nothing any more: drop its incoming edges, move on
        for each incoming edge, later senders first:
            delta <- metric(circuit without edge) - metric(circuit)
            if delta < tau: remove the edge for good

The metric is a loss (lower is better), so removing an edge that does not hurt by ``tau`` or more
keeps the circuit as faithful as before.  Each edge test is one patched forward that restarts at the
receiver's layer: every edge removed so far lies downstream of it, so the layers below still hold
the unpatched run's values (``engine.SenderCache``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..checkpoint import Checkpointer
from ..graph import EdgeMask, EdgeScores, Graph
from .base import Problem, register


# A forward of the circuit: (mask values, stage at which they first differ from the unpatched run) -> loss
LossFn = Callable[[torch.Tensor, int], float]


@register("acdc")
@torch.no_grad()
def acdc(problem: Problem, tau: float, abs_delta: bool = False, max_edge_tests: int | None = None,
         checkpointer: Checkpointer | None = None, **_) -> EdgeScores:
    """ACDC on the fast engine: each edge test restarts at the stage its edge is read."""
    check_tau(tau)
    engine, data = problem.engine("validation"), problem.data("validation")
    _, cache = engine.run(problem.graph.full_mask(), data.positions, record=True)

    def loss(mask: torch.Tensor, stage: int) -> float:
        logits, _ = engine.run(mask, data.positions, start_stage=stage, cache=cache)
        return float(problem.loss(logits, "validation"))

    return acdc_search(problem.graph, loss, tau, abs_delta, max_edge_tests, progress=problem.progress,
                       dtype=engine.dtype, checkpointer=checkpointer)


def check_tau(tau) -> None:
    # tau <= 0 would remove nothing (or keep removing edges that hurt): never what is meant
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a positive number, got {tau!r}")


def check_acdc_params(tau, max_edge_tests=None, abs_delta=False) -> None:
    """One-line errors for bad ACDC settings (also called by the pipeline before any model loads)."""
    check_tau(tau)
    if max_edge_tests is not None and (isinstance(max_edge_tests, bool) or not isinstance(max_edge_tests, int)
                                       or max_edge_tests < 0):
        raise ValueError(f"max_edge_tests must be a non-negative integer or null, got {max_edge_tests!r}")
    if not isinstance(abs_delta, bool):
        raise ValueError(f"abs_delta must be true or false, got {abs_delta!r}")


def acdc_search(graph: Graph, loss: LossFn, tau: float, abs_delta: bool = False,
                max_edge_tests: int | None = None, progress: bool = True,
                dtype: torch.dtype = torch.float32, checkpointer: Checkpointer | None = None) -> EdgeScores:
    """Algorithm 1 over ``graph``, given any way of computing the loss of a circuit.

    With a ``checkpointer`` the state (mask, scores, trace, current loss) is saved between edge
    tests and a resumed run skips every edge already decided, so it ends exactly as an
    uninterrupted run would (the current loss is restored, not recomputed)."""
    check_tau(tau)
    saved = checkpointer.restore() if checkpointer is not None else None
    if saved is None:
        mask = torch.ones(graph.n_edges, dtype=dtype)
        current = loss(mask, 0)
        # Score = how much removing the edge hurt when it was tested; an edge dropped untested
        # because its receiver fed nothing scores -inf; one never reached (max_edge_tests) +inf.
        scores = torch.full((graph.n_edges,), math.inf, dtype=torch.float64)
        trace: list[dict] = []
    else:
        mask, scores, trace, current = saved["mask"].to(dtype), saved["scores"], saved["trace"], saved["current"]
    n_tests = len(trace)
    decided = ~torch.isposinf(scores)

    def state() -> dict:
        return dict(mask=mask.clone(), scores=scores.clone(), trace=list(trace), current=current)

    def budget_left() -> bool:
        return max_edge_tests is None or n_tests < max_edge_tests

    bar = tqdm(total=graph.n_edges, initial=int(decided.sum()), desc="ACDC", unit="edge",
               disable=not progress, leave=False)
    for receiver in graph.receivers_in_order:
        incoming = graph.incoming[receiver]
        if not budget_left():
            break
        if bool(decided[incoming].all()):  # done before a resume
            continue
        if graph.granularity != "nodes" and receiver != "resid_post" and not mask[graph.outgoing[receiver]].any():
            mask[incoming] = 0  # the receiver feeds nothing: its inputs cannot matter
            scores[incoming] = -math.inf
            bar.update(len(incoming))
            continue
        for e in incoming:
            if not budget_left():
                break
            if decided[e]:
                continue
            mask[e] = 0
            candidate = loss(mask, graph.edges[e].stage)
            delta = candidate - current
            removed = (abs(delta) if abs_delta else delta) < tau
            if removed:
                current = candidate
            else:
                mask[e] = 1
            n_tests += 1
            scores[e] = delta
            trace.append(dict(step=n_tests, edge=graph.edges[e].name, delta=delta, metric=current,
                              kept=not removed, n_edges=int(mask.sum())))
            bar.update(1)
            bar.set_postfix_str(f"{receiver} | {int(mask.sum())} edges left", refresh=False)
            if checkpointer is not None:
                checkpointer.step(state)
    bar.close()

    return EdgeScores(graph, scores, EdgeMask(graph, mask.bool()), extras=dict(trace=trace, n_edge_tests=n_tests))
