"""What a method returns: its result (scores, its own circuit, optional curve and trace)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict

import torch

from ..core.graph import EdgeMask, Graph



class TraceRow(TypedDict):
    """One search step (ACDC's edge test): the edge, the loss change its removal caused, the loss
    of the circuit after the decision (the metric, or minus it where higher is better), whether it
    was kept, and the edges left."""

    step: int
    edge: str
    delta: float
    loss: float
    kept: bool
    n_edges: int


@dataclass
class CurvePoint:
    """One circuit of a curve read from a single run (a ranking's top-n): the parameter's value
    there, the circuit, and what changed from the previous point (the component dropped).  A
    ranking's points also carry the fraction of the edges they were cut at (None: an extra point),
    the size before pruning, and the circuit's metric and faithfulness on the validation split
    (where k=auto measured them) and on the test split (the test curve: the points at a fraction)."""

    parameter: float
    circuit: EdgeMask
    removed: str = ""
    fraction: float | None = None
    n_unpruned: int | None = None
    metric: float | None = None
    faithfulness: float | None = None
    metric_test: float | None = None
    faithfulness_test: float | None = None


@dataclass
class MethodResult:
    """What every method returns: one number per edge, higher = more important to the task, and
    ``circuit``, the method's own circuit at its parameter's value ``parameter`` (ACDC's tau, SP's
    lambda, HISP's k; the spec names it).  Optional: ``curve``, the circuits of a whole curve from
    this one run; ``trace``, the search's steps; ``tables``, the method's own tables (file name ->
    rows); ``details``, numbers for summary.json's ``method_details``; ``label``, a variant the
    report plots as its own method (SP with edge gates)."""

    graph: Graph
    scores: torch.Tensor
    circuit: EdgeMask
    parameter: float | None = None
    curve: list[CurvePoint] | None = None
    trace: list[TraceRow] | None = None
    tables: dict[str, list[dict]] = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    label: str | None = None
    ranking: Any = None  # a ranking method's ``methods.ranking.Ranking`` (its cuts make the ROC)
