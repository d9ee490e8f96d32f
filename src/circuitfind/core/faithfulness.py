"""Faithfulness of a circuit and the areas MIB's circuit track reports (numbers only, no model).

Faithfulness of a circuit C, with m the task's metric averaged over prompts, N the full model and
the empty circuit (every edge ablated, with the same ablation as C)::

    f(C) = (m(C) - m(empty)) / (m(N) - m(empty))

f is 1 for the full model and 0 for the empty circuit.  A divergence from the full model (KL, l2)
is 0 at N by definition, so there f(C) = 1 - D(C) / D(empty).

Over circuits of several sizes (MIB: the top 0.1%, 0.2%, 0.5%, 1%, 2%, 5%, 10%, 20%, 50% and 100% of
the edges by a method's scores, each pruned), with x a circuit's fraction of the graph's edges::

    CPR = trapezoid area under f(x)          (higher is better; the ideal, f = 1 throughout, is the range's length)
    CMD = trapezoid area under |1 - f(x)|    (lower is better; 0 is ideal)

MIB integrates over x in [0.001, 1], so both ideals are 0.999 and 0.  A curve that does not cover
that range (a threshold sweep whose circuits are all larger than 0.1% of the graph) is integrated
over what it covers, and ``Areas`` says which range that was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

MIB_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
# Metrics that measure a distance from the full model: m(N) = 0 exactly.
DIVERGENCES = ("kl", "l2")


def faithfulness(m_circuit: float, m_empty: float, m_full: float) -> float:
    """f(C) = (m(C) - m(empty)) / (m(N) - m(empty)); NaN when the full model and the empty circuit
    have the same metric (nothing to recover)."""
    span = m_full - m_empty
    if span == 0 or not all(map(math.isfinite, (m_circuit, m_empty, m_full))):
        return math.nan
    return (m_circuit - m_empty) / span


def full_model_metric(metric_name: str, measured: float) -> float:
    """m(N): 0 for a divergence from the full model (what the rounding of ``measured`` hides), else
    the measured value."""
    return 0.0 if metric_name in DIVERGENCES else measured


def describe(metric_name: str) -> str:
    """How f is computed for ``metric_name`` (for tables and summaries)."""
    if metric_name in DIVERGENCES:
        return f"f = 1 - {metric_name}(C) / {metric_name}(empty)"
    return f"f = ({metric_name}(C) - {metric_name}(empty)) / ({metric_name}(full) - {metric_name}(empty))"


@dataclass(frozen=True)
class Areas:
    cpr: float  # area under f
    cmd: float  # area under |1 - f|
    low: float  # the range of fractions integrated over
    high: float
    n_points: int

    @property
    def full_range(self) -> bool:
        return self.low <= MIB_FRACTIONS[0] + 1e-12 and self.high >= 1.0 - 1e-12

    def range_note(self) -> str:
        """"" when the curve covers MIB's range, else the range it covers (in percent)."""
        if self.n_points == 0:
            return "no points"
        return "" if self.full_range else f"{100 * self.low:.3g}%-{100 * self.high:.3g}%"


def areas(fractions: Sequence[float], f: Sequence[float], low: float = MIB_FRACTIONS[0],
          high: float = 1.0) -> Areas:
    """CPR and CMD of the points (fraction, f) by the trapezoid rule, over [low, high] intersected
    with the range the points cover (a curve extending beyond it is cut there, interpolating
    linearly).  Points sharing a fraction are averaged; points with a NaN f are left out."""
    by_x: dict[float, list[float]] = {}
    for x, y in zip(fractions, f):
        if y is not None and not math.isnan(y) and x is not None and not math.isnan(x):
            by_x.setdefault(float(x), []).append(float(y))
    points = sorted((x, sum(ys) / len(ys)) for x, ys in by_x.items())
    if not points:
        return Areas(math.nan, math.nan, math.nan, math.nan, 0)
    lo, hi = max(low, points[0][0]), min(high, points[-1][0])
    if lo > hi:  # every point outside [low, high]
        return Areas(math.nan, math.nan, points[0][0], points[-1][0], len(points))
    inside = [(x, y) for x, y in points if lo < x < hi]
    curve = [(lo, _interpolate(points, lo))] + inside + ([(hi, _interpolate(points, hi))] if hi > lo else [])
    cpr = cmd = 0.0
    for (x1, y1), (x2, y2) in zip(curve, curve[1:]):
        cpr += (x2 - x1) * (y1 + y2) / 2
        cmd += (x2 - x1) * (abs(1 - y1) + abs(1 - y2)) / 2
    return Areas(cpr, cmd, lo, hi, len(points))


def _interpolate(points: list[tuple[float, float]], x: float) -> float:
    for (x1, y1), (x2, y2) in zip(points, points[1:]):
        if x1 <= x <= x2:
            return y1 if x2 == x1 else y1 + (y2 - y1) * (x - x1) / (x2 - x1)
    return points[0][1] if x <= points[0][0] else points[-1][1]
