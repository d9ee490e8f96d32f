"""The task's ground-truth circuit, reported as if a method had found it (scores 1 in, 0 out)."""

from __future__ import annotations

from ..tasks.ground_truth import ground_truth_mask
from .result import MethodResult
from .base import Problem


def canonical(problem: Problem) -> MethodResult:
    mask = ground_truth_mask(problem.task, problem.graph)
    if mask is None:
        raise ValueError(f"task {problem.task.name} has no ground-truth circuit")
    return MethodResult(problem.graph, mask.values.double(), mask)
