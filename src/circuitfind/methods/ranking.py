"""Circuits from a ranking (EAP, EAP-IG, HISP): tie groups, pruned top-n circuits, the faithfulness
curve at MIB's fractions, and the choice of the method's own circuit.

**Ties.**  Scores come from float computations, so two scores that differ by less than the
computation's rounding are not ordered by anything but noise.  Sorted from the highest, consecutive
scores that differ by at most ``tolerance`` form one tie group, with

    tolerance = 8 x machine epsilon of the engine's dtype (capped at 1e-3) x the largest |score|

(float32: 9.5e-7 of the largest score; float64: 1.8e-15).  A ranking is cut only between tie groups,
so every circuit it yields, and every ROC point, is the same whatever the noise inside a group.

**Top-n circuits.**  The circuit of a fraction p of the graph's edges is the largest run of whole tie
groups (from the top) with at most ``floor(p * n_edges)`` edges (MIB: ``int(pct * n_edges)``), then
pruned to the edges on an input-to-output path (``core.pruning``); its size is the pruned count.  A
ranking of components (HISP) cuts between tie groups of components, and a cut's circuit is every edge
between kept components.

**The curve** is read at MIB's ten fractions (0.1% ... 100%; ``points``: evenly spaced cuts added up
to that many points in all).
Each distinct circuit costs one patched forward; the empty circuit and the full model are known
without one (the run's caches).  ``k`` picks the method's own circuit: an integer n the pruned top-n
circuit, ``all`` the whole graph, and ``auto`` a circuit of the curve at which its faithfulness on
the validation split crosses ``target``:

**k=auto.**  The test curve is measured first (the curve's points at a fraction, on the test split).
Then, on the validation split, a bracket of two neighbouring circuits of the curve (the empty
circuit, f = 0, below them all) is searched for the crossing: the circuits a bisection of the
bracket with ``refine`` (2) steps could measure (``bisection_grid``: the bracket cut in four) are
searched for a neighbouring pair, the lower one falling short of ``target`` and the upper one
reaching it, both measured (the bracket's ends included).  The bracket starts at the test curve's
crossing (the largest fraction whose test faithfulness falls short, and the curve's next circuit
above it), and the search at the grid's circuit just above where the test curve, interpolated
between the bracket's ends, crosses the target, then its neighbour on the other side, then by
bisection.  Where the bracket's upper end falls short, the bracket moves one step of the curve up;
where its lower end reaches the target, one step down.  The method's circuit is the pair's upper
circuit: the smallest circuit the search measured that reaches the target, the next smaller one it
measured falling short.  On a validation curve that crosses the target once, this is the circuit a
search from the largest circuit down followed by ``refine`` bisections keeps (the smallest grid
circuit of the crossing's bracket that reaches it; ``tests/test_ranking.py`` holds it to that
search), with two validation forwards where the test curve leads to the right pair, and none of the
large circuits, the costliest; on a curve that crosses more than once, it is the crossing the test
curve leads to.  The test split only says where to look: whether a circuit reaches the target is
its validation faithfulness, and every number reported is that of an exact forward of the circuit
it names.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from dataclasses import dataclass
from typing import Callable

import torch

from ..core.faithfulness import MIB_FRACTIONS, faithfulness, full_model_metric
from ..core.graph import EdgeMask, Graph
from ..core.pruning import prune
from .base import Problem
from .result import CurvePoint

RELATIVE_TIE_TOLERANCE_EPS = 8  # machine epsilons
MAX_RELATIVE_TIE_TOLERANCE = 1e-3


def tie_tolerance(scores: torch.Tensor, dtype: torch.dtype) -> float:
    """The absolute tolerance under which two of ``scores`` (computed in ``dtype``) are tied."""
    relative = min(RELATIVE_TIE_TOLERANCE_EPS * torch.finfo(dtype).eps, MAX_RELATIVE_TIE_TOLERANCE)
    largest = float(scores.abs().max()) if scores.numel() else 0.0
    return relative * largest


def tie_groups(scores: torch.Tensor, tolerance: float) -> tuple[list[int], torch.Tensor]:
    """(order, group): the items from the highest score down (ties in index order) and each item's
    tie group (0 = the top group): consecutive sorted scores at most ``tolerance`` apart share one."""
    values = [float(s) for s in scores]
    order = sorted(range(len(values)), key=lambda i: -values[i])
    group = torch.empty(len(values), dtype=torch.long)
    current = 0
    for position, i in enumerate(order):
        if position and values[order[position - 1]] - values[i] > tolerance:
            current += 1
        group[i] = current
    # inside a group, index order (so the order itself does not depend on noise either)
    order = sorted(range(len(values)), key=lambda i: (int(group[i]), i))
    return order, group


@dataclass
class Ranking:
    """Nested circuits: cut j keeps the first j tie groups (j = 0 .. n_groups)."""

    graph: Graph
    sizes: list[int]  # unpruned edges kept at each cut, nondecreasing, sizes[0] = 0
    circuit_of_cut: Callable[[int], torch.Tensor]  # j -> bool [n_edges], unpruned
    added: list[str]  # what cut j adds over cut j - 1 (j >= 1), for the curve's "removed" column
    tolerance: float
    unit: str = "edges"  # what the method ranks: edges or components
    items: list[int] | None = None  # ranked items kept at each cut (None: = sizes, edges)

    @property
    def n_cuts(self) -> int:
        return len(self.sizes)

    def cut_for(self, n_edges: int) -> int:
        """The largest cut with at most ``n_edges`` (unpruned) edges."""
        return max(bisect_right(self.sizes, n_edges) - 1, 0)

    def cut_for_items(self, k: int) -> int:
        """The largest cut with at most ``k`` ranked items (edges or components)."""
        return max(bisect_right(self.items or self.sizes, k) - 1, 0)

    def circuit(self, cut: int, pruned: bool = True) -> torch.Tensor:
        kept = self.circuit_of_cut(cut)
        return prune(self.graph, kept) if pruned else kept


def edge_ranking(graph: Graph, scores: torch.Tensor, tolerance: float) -> Ranking:
    """Rank edges by ``scores`` (higher first) in tie groups."""
    order, group = tie_groups(scores, tolerance)
    n_groups = int(group.max()) + 1 if len(order) else 0
    counts = torch.bincount(group, minlength=n_groups).tolist()
    sizes = [0]
    for c in counts:
        sizes.append(sizes[-1] + c)
    added = [""]
    for j in range(n_groups):
        first = order[sizes[j]]
        extra = counts[j] - 1
        added.append(graph.edges[first].name + (f" +{extra} tied" if extra else ""))
    return Ranking(graph, sizes, lambda j: group < j, added, tolerance, "edges")


def component_ranking(graph: Graph, scores: torch.Tensor, tolerance: float, names: list[str],
                      circuit_of: Callable[[torch.Tensor], EdgeMask]) -> Ranking:
    """Rank components by ``scores``; ``circuit_of(kept components)`` is a set of components' circuit."""
    order, group = tie_groups(scores, tolerance)
    n_groups = int(group.max()) + 1 if len(order) else 0
    circuits = [circuit_of(group < j).kept.cpu() for j in range(n_groups + 1)]
    added, items = [""], [0]
    for j in range(n_groups):
        members = [names[i] for i in order if int(group[i]) == j]
        added.append(members[0] + (f" +{len(members) - 1} tied" if len(members) > 1 else ""))
        items.append(items[-1] + len(members))
    return Ranking(graph, [int(c.sum()) for c in circuits], lambda j: circuits[j], added, tolerance,
                   "components", items)


def curve_cuts(ranking: Ranking, fractions=MIB_FRACTIONS, points: int | None = None) -> list[tuple[float | None, int]]:
    """(fraction or None, cut) of the curve: one per fraction (fractions that fall on the same cut
    share its circuit, but each is a point of the curve, as MIB integrates over all ten), then
    evenly spaced cuts not yet on it until it has ``points`` points in all, largest first."""
    n = ranking.graph.n_edges
    out: list[tuple[float | None, int]] = [(p, ranking.cut_for(int(p * n))) for p in fractions]
    if points:  # evenly spaced cuts, from the top, until the curve has ``points`` points
        last = ranking.n_cuts - 1
        taken = {cut for _, cut in out}
        for i in range(points):
            if len(out) >= points:
                break
            cut = last - round(last * i / max(points - 1, 1))
            if cut not in taken:
                taken.add(cut)
                out.append((None, cut))
    return sorted(out, key=lambda t: (-t[1], -(t[0] if t[0] is not None else -1.0)))


class CircuitEvaluator:
    """Mean metric of circuits on one split, one patched forward per distinct circuit (of its
    needed nodes only: a pruned top-n circuit is small); the empty circuit and the full model are
    read from the run's caches (m(empty): the empty mask's run, which the engine computes without a
    forward)."""

    def __init__(self, problem: Problem, split: str = "validation"):
        self.problem, self.split = problem, split
        graph = problem.graph
        self.m_full = full_model_metric(problem.metric.name,
                                        float(problem.per_prompt(problem.clean_logits(split), split).mean()))
        self.m_empty = problem.evaluate(torch.zeros(graph.n_edges), split)
        self.n_forwards = 0
        self._seen: dict[bytes, float] = {}

    def metric(self, kept: torch.Tensor) -> float:
        kept = kept.bool()
        if not kept.any():
            return self.m_empty
        if kept.all():
            return self.m_full
        key = bytes(kept.numpy().tobytes())
        if key not in self._seen:
            self._seen[key] = self.problem.evaluate(kept.to(torch.float32), self.split, nodes_only=True)
            self.n_forwards += 1
        return self._seen[key]

    def faithfulness(self, kept: torch.Tensor) -> tuple[float, float]:
        m = self.metric(kept)
        return m, faithfulness(m, self.m_empty, self.m_full)


def curve_point(ranking: Ranking, cut: int, pruned: bool, fraction: float | None = None) -> CurvePoint:
    """The curve's point at ``cut``: its (pruned) circuit, the component added there, its fraction
    (None: an extra point) and its size before pruning."""
    kept = ranking.circuit(cut, pruned)
    return CurvePoint(int(kept.sum()), EdgeMask(ranking.graph, kept), ranking.added[cut] if cut else "",
                      fraction=fraction, n_unpruned=ranking.sizes[cut])


def parse_k(k) -> int | str:
    """``k``: a non-negative integer, ``auto`` or ``all``."""
    if isinstance(k, str) and k in ("auto", "all"):
        return k
    if not isinstance(k, bool) and isinstance(k, int) and k >= 0:
        return k
    raise ValueError(f"k must be auto, all or a non-negative integer, got {k!r}")


def ranked_result(problem: Problem, ranking: Ranking, k, target: float, points: int | None,
                  pruned: bool, refine: int = 2) -> tuple[EdgeMask, int, list[CurvePoint], dict]:
    """The method's circuit, its size, the curve's points (MIB's fractions, each with the validation
    metric and faithfulness where k=auto measured it, and, under k=auto, the test curve) and details
    for the summary (how the circuit was chosen, the forwards and seconds spent on each split).

    ``k=auto`` measures the test curve first (the points at a fraction, one forward per distinct
    circuit, which the pipeline reports and would measure anyway), then searches the validation
    split for a crossing of the target (``auto_search``), starting where the test curve crosses it;
    the circuits of the bisection grid it measures join the curve as extra points (no fraction)."""
    k = parse_k(k)
    graph = ranking.graph
    curve: list[CurvePoint] = []
    cut_of: dict[int, int] = {}  # id of a curve point -> its cut
    for fraction, cut in curve_cuts(ranking, MIB_FRACTIONS, points):
        p = curve_point(ranking, cut, pruned, fraction)
        cut_of[id(p)] = cut
        curve.append(p)
    details: dict = {}
    if k == "all":
        kept = torch.ones(graph.n_edges, dtype=torch.bool)
        how = "k=all: every edge"
    elif k == "auto":
        test = CircuitEvaluator(problem, "test")  # builds the test split's engine (its caches) if need be
        started = time.perf_counter()
        for p in curve:
            if p.fraction is not None:
                p.metric_test, p.faithfulness_test = test.faithfulness(p.circuit.kept)
        details.update(curve_test_forwards=test.n_forwards, curve_test_s=round(time.perf_counter() - started, 3))
        evaluator = CircuitEvaluator(problem, "validation")
        started = time.perf_counter()
        chosen = auto_search(ranking, curve, cut_of, evaluator, target, refine, pruned)
        details.update(curve_forwards=evaluator.n_forwards, curve_s=round(time.perf_counter() - started, 3))
        if chosen is not None:
            kept = chosen.circuit.kept.clone()
            where = f"top {100 * chosen.fraction:g}% of edges" if chosen.fraction is not None \
                else f"top {chosen.n_unpruned} {ranking.unit if ranking.unit == 'edges' else 'edges by component'}"
            how = (f"k=auto: the smallest pruned circuit of the curve ({where}) with validation "
                   f"faithfulness >= {target:g} (f = {chosen.faithfulness:.3f})")
        else:
            kept = torch.ones(graph.n_edges, dtype=torch.bool)
            how = f"k=auto: no circuit of the curve reached faithfulness {target:g}; every edge kept"
    else:
        cut = ranking.cut_for_items(k)
        kept = ranking.circuit(cut, pruned)
        how = (f"k={k}: the top {(ranking.items or ranking.sizes)[cut]} {ranking.unit} (whole tie groups)"
               f"{', pruned' if pruned else ''}")
    if not pruned:
        how = how.replace("smallest pruned circuit", "smallest (unpruned) circuit")
    curve.sort(key=lambda p: -cut_of[id(p)])
    details = dict(chosen_by=how, tie_tolerance=ranking.tolerance, n_tie_groups=ranking.n_cuts - 1,
                   pruned=pruned, target=target if k == "auto" else None,
                   curve_forwards=details.pop("curve_forwards", 0), curve_s=details.pop("curve_s", 0.0), **details)
    return EdgeMask(graph, kept), int(kept.sum()), curve, details


def reaches_target(f: float, target: float) -> bool:
    """Whether faithfulness ``f`` reaches ``target`` (NaN, where m(N) = m(empty), never does)."""
    return not math.isnan(f) and f >= target


def bisection_grid(lo: int, hi: int, refine: int) -> list[int]:
    """The cuts a bisection of (lo, hi) with ``refine`` steps can reach, ends included, in order: on a
    curve that crosses the target once between lo and hi, every such bisection keeps the smallest
    of them that reaches it, whichever way it is found."""
    if refine <= 0 or hi - lo <= 1:
        return [lo, hi]
    middle = (lo + hi) // 2
    return bisection_grid(lo, middle, refine - 1)[:-1] + bisection_grid(middle, hi, refine - 1)


def guess(grid: list[int], f_lo: float | None, f_hi: float | None, target: float) -> int:
    """The index of the first cut of ``grid`` at or above where the test curve, interpolated
    linearly between the grid's ends (test faithfulness ``f_lo`` and ``f_hi``), crosses ``target``
    (the middle where it cannot say)."""
    if f_lo is None or f_hi is None or not math.isfinite(f_hi - f_lo) or f_hi == f_lo:
        x = 0.5
    else:
        x = min(max((target - f_lo) / (f_hi - f_lo), 0.0), 1.0)
    at = grid[0] + x * (grid[-1] - grid[0])
    return next((k for k in range(1, len(grid)) if grid[k] >= at), len(grid) - 1)


def auto_search(ranking: Ranking, curve: list[CurvePoint], cut_of: dict[int, int], evaluator: CircuitEvaluator,
                target: float, refine: int, pruned: bool) -> CurvePoint | None:
    """k=auto's circuit (the module's docstring says how it is found): the smallest circuit the
    validation search measured that reaches ``target`` while the next smaller circuit it measured
    does not (None: not even the largest reaches it).  Each measured circuit's metric and
    faithfulness go on its curve points (and those of the whole graph and the empty circuit, which
    cost no forward); the circuits of the bisection grid join the curve as extra points."""
    by_cut: dict[int, list[CurvePoint]] = {}
    for p in curve:
        by_cut.setdefault(cut_of[id(p)], []).append(p)
    ladder = sorted(set(by_cut) | {0})  # the curve's cuts, from the empty circuit up
    known: dict[int, bool] = {}  # cut -> reaches the target on the validation split

    def reaches(cut: int) -> bool:
        if cut not in known:
            if cut not in by_cut:  # a bisection's circuit: a new point of the curve
                p = curve_point(ranking, cut, pruned)
                cut_of[id(p)] = cut
                curve.append(p)
                by_cut[cut] = [p]
            metric, f = evaluator.faithfulness(by_cut[cut][0].circuit.kept)
            for p in by_cut[cut]:
                p.metric, p.faithfulness = metric, f
            known[cut] = reaches_target(f, target)
        return known[cut]

    for cut, points in by_cut.items():  # the whole graph and the empty circuit cost no forward
        if points[0].circuit.kept.all() or not points[0].circuit.kept.any():
            reaches(cut)
    short = [cut_of[id(p)] for p in curve if p.fraction is not None and p.faithfulness_test is not None
             and not reaches_target(p.faithfulness_test, target)]
    i = ladder.index(max(short)) if short else 0  # lo = ladder[i], hi = ladder[i + 1]
    lo, hi = ladder[i], ladder[min(i + 1, len(ladder) - 1)]
    test_f = {cut_of[id(p)]: p.faithfulness_test for p in curve if p.faithfulness_test is not None}
    while True:
        if lo == hi:  # the curve's smallest circuit (lo) or its largest (hi), nothing beside it
            if not reaches(hi):
                return None
            break
        grid = bisection_grid(lo, hi, refine)
        n = len(grid) - 1
        a, b = 0, n  # grid[a] falls short and grid[b] reaches the target, once measured
        k, guided = guess(grid, test_f.get(lo), test_f.get(hi), target), 2
        while True:
            reached = reaches(grid[k])
            if k == n and not reached:  # the crossing is higher up: the next step of the curve
                lo, hi = hi, ladder[min(ladder.index(hi) + 1, len(ladder) - 1)]
                break
            if k == 0 and reached:  # the crossing is lower down
                lo, hi = ladder[max(ladder.index(lo) - 1, 0)], lo
                break
            a, b = (a, k) if reached else (k, b)
            if b - a == 1 and grid[a] in known and grid[b] in known:
                lo = hi = None  # found: grid[b]
                break
            guided -= 1
            if guided > 0:  # the guess, then its neighbour on the other side of the target
                k = k - 1 if reached else k + 1
            else:  # then bisection, and last whichever end is not measured yet
                k = (a + b) // 2 if b - a > 1 else (a if grid[a] not in known else b)
        if lo is None:
            hi = grid[b]
            break
    points = by_cut[hi]
    return min(points, key=lambda p: p.fraction if p.fraction is not None else math.inf)
