"""The orders guided ACDC (``methods/acdc_guided.py``) tests a block's edges in: attribution on the
current circuit (EAP, EAP-IG through the engine's mask gradient), a seeded random order, or ACDC's own."""

from __future__ import annotations

from typing import Callable

import torch

from .attribution import mask_gradient
from .base import Problem
from .objective import resolve_objective

# (the current circuit's mask [n_edges], the edges to order) -> importance of each (higher: test later)
ScoreFn = Callable[[torch.Tensor, list[int]], torch.Tensor]


def attribution_order(problem: Problem, order: str, ig_steps: int = 3, seed: int = 0) -> ScoreFn:
    """The importance of edges on the current circuit, by which a block's tests are ordered."""
    if order == "graph":  # ACDC's own order: the earlier an edge is visited, the sooner it is tested
        return lambda mask, edges: -torch.tensor(edges, dtype=torch.float64)
    if order == "random":
        generator = torch.Generator().manual_seed(seed)
        return lambda mask, edges: torch.rand(len(edges), generator=generator, dtype=torch.float64)

    def importance(mask: torch.Tensor, edges: list[int]) -> torch.Tensor:
        values = mask.double()
        if order == "eap":
            full = bool((values == 1).all())
            objective = resolve_objective(problem, "auto") if full else "metric"
            grad = mask_gradient(problem, values, objective)
        else:  # eap_ig: the midpoint rule on alpha * mask, alpha in (0, 1)
            grad = sum(mask_gradient(problem, (i + 0.5) / ig_steps * values, "metric") for i in range(ig_steps))
        # dL/dm_e at m_e = 1: removing the edge changes the loss by about -grad_e
        return grad[edges].abs()

    return importance
