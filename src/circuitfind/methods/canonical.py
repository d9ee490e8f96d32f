"""The task's canonical circuit, reported as if a method had found it (scores 1 in, 0 out)."""

from __future__ import annotations

import torch

from ..evaluation import canonical_mask
from ..graph import EdgeScores
from .base import Problem


def canonical(problem: Problem) -> EdgeScores:
    mask = canonical_mask(problem.task, problem.graph)
    if mask is None:
        raise ValueError(f"task {problem.task.name} has no canonical circuit")
    return EdgeScores(problem.graph, mask.values.double(), mask)
