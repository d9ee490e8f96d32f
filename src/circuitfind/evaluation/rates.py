"""Scoring circuits against a canonical one: TPR/FPR at edge and node level.

Consumes only masks and the graph: any method's output can be evaluated the same way."""

from __future__ import annotations

import math

import torch

from ..core.graph import EdgeMask, Graph


def tpr_fpr(found: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    found, truth = found.bool(), truth.bool()
    positives, negatives = int(truth.sum()), int((~truth).sum())
    tp, fp = int((found & truth).sum()), int((found & ~truth).sum())
    return (tp / positives if positives else float("nan"), fp / negatives if negatives else float("nan"))


def node_indicator(mask: EdgeMask, universe: list[str]) -> torch.Tensor:
    nodes = mask.nodes()
    return torch.tensor([n in nodes for n in universe])


def node_universe(graph: Graph) -> list[str]:
    """Every component a circuit can contain (a head counts once, an MLP once)."""
    return sorted(graph.full_mask().nodes())


def edge_and_node_rates(found: EdgeMask, truth: EdgeMask) -> dict[str, float]:
    edge_tpr, edge_fpr = tpr_fpr(found.kept, truth.kept)
    universe = node_universe(found.graph)
    node_tpr, node_fpr = tpr_fpr(node_indicator(found, universe), node_indicator(truth, universe))
    return dict(edge_tpr=edge_tpr, edge_fpr=edge_fpr, node_tpr=node_tpr, node_fpr=node_fpr)


# ---- ROC curves and their area, as the ACDC paper computes them -------------------------------
# A method's sweep gives one (FPR, TPR) point per circuit.  The curve adds the two trivial circuits
# (0, 0) and (1, 1), keeps only the points no other point beats (Pareto front: lower or equal FPR
# and higher or equal TPR), and its area is that of the pessimistic staircase through them: between
# two front points the curve stays at the lower TPR until the higher FPR is reached.

Point = tuple[float, float]  # (fpr, tpr)


def roc_points(points) -> list[Point]:
    """Finite (fpr, tpr) pairs of ``points`` plus (0, 0) and (1, 1); points with a missing rate
    (NaN or None: a task without ground truth) are dropped."""
    out: list[Point] = [(0.0, 0.0), (1.0, 1.0)]
    for fpr, tpr in points:
        if fpr is None or tpr is None or math.isnan(fpr) or math.isnan(tpr):
            continue
        if not (0 <= fpr <= 1 and 0 <= tpr <= 1):
            raise ValueError(f"ROC point ({fpr}, {tpr}) lies outside the unit square")
        out.append((float(fpr), float(tpr)))
    return out


def pareto_front(points) -> list[Point]:
    """The points no other point dominates (fpr no higher and tpr no lower, one of them strictly),
    without duplicates, in order of increasing fpr (and so of increasing tpr)."""
    front: list[Point] = []
    for fpr, tpr in sorted(set(points), key=lambda p: (p[0], -p[1])):
        if not front or tpr > front[-1][1]:  # sorted by fpr: only a higher tpr escapes domination
            front.append((fpr, tpr))
    return front


def roc_auc(points) -> float:
    """Area under the pessimistic ROC staircase: sum over the Pareto front, in order of fpr, of
    (1 - fpr_i) * (tpr_i - tpr_{i-1})."""
    front = pareto_front(roc_points(points))
    area, previous_tpr = 0.0, 0.0
    for fpr, tpr in front:
        area += (1 - fpr) * (tpr - previous_tpr)
        previous_tpr = tpr
    return area


def roc_staircase(points) -> tuple[list[float], list[float]]:
    """x and y of the pessimistic staircase (for plotting): right at the old TPR, then up."""
    front = pareto_front(roc_points(points))
    xs, ys = [0.0], [0.0]
    for fpr, tpr in front:
        xs += [fpr, fpr]
        ys += [ys[-1], tpr]
    xs.append(1.0)
    ys.append(ys[-1])
    return xs, ys
