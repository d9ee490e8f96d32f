"""The task's canonical circuit, reported as if a method had found it (scores 1 in, 0 out)."""

from __future__ import annotations

import torch

from ..tasks.ground_truth import canonical_mask
from .result import MethodResult
from .base import Problem


def canonical(problem: Problem) -> MethodResult:
    mask = canonical_mask(problem.task, problem.graph)
    if mask is None:
        raise ValueError(f"task {problem.task.name} has no canonical circuit")
    return MethodResult(problem.graph, mask.values.double(), mask)
