"""The one signature every method has: ``method(problem, **params) -> EdgeScores``.

A ``Problem`` bundles what a method may use: the task, the graph, the ablation kind, the metric, and
patch engines built on demand.  Methods never reach into tasks or evaluation beyond it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..engine import PatchEngine, make_ablation
from ..graph import EdgeScores, Graph
from ..metrics import Metric
from ..tasks.base import Task, TaskData

MethodFn = Callable[..., EdgeScores]
METHODS: dict[str, MethodFn] = {}


def register(name: str):
    def wrap(fn: MethodFn) -> MethodFn:
        METHODS[name] = fn
        return fn
    return wrap


def get_method(name: str) -> MethodFn:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


@dataclass
class Problem:
    task: Task
    graph: Graph
    corruption: str
    metric: Metric
    progress: bool = True
    shuffle_positions: bool = False  # corruption.shuffle_positions: the corrupted run's positions permuted
    _engines: dict[str, PatchEngine] = field(default_factory=dict, repr=False)
    _clean_logits: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def data(self, split: str) -> TaskData:
        if split not in ("validation", "test"):
            raise ValueError(f"unknown split {split!r}")
        return getattr(self.task, split)

    def engine(self, split: str = "validation") -> PatchEngine:
        if split not in self._engines:
            data = self.data(split)
            ablation = make_ablation(self.corruption, self.task.model, self.graph, data.clean, data.corrupted,
                                     shuffle_positions=self.shuffle_positions)
            self._engines[split] = PatchEngine(self.task.model, self.graph, data.clean, ablation)
        return self._engines[split]

    @torch.no_grad()
    def clean_logits(self, split: str = "validation") -> torch.Tensor:
        """The full model's logits at the metric positions: what KL compares against."""
        if split not in self._clean_logits:
            self._clean_logits[split] = self.engine(split).logits(self.graph.full_mask(), self.data(split).positions)
        return self._clean_logits[split]

    def per_prompt(self, logits: torch.Tensor, split: str = "validation", metric: Metric | None = None) -> torch.Tensor:
        """The metric of patched ``logits`` (at the split's positions) for each prompt, in its own sign."""
        return (metric or self.metric).per_prompt(logits, self.clean_logits(split), self.data(split))

    def loss(self, logits: torch.Tensor, split: str = "validation") -> torch.Tensor:
        """Mean metric signed so that lower is better (differentiable): what methods minimise."""
        return self.metric.loss(logits, self.clean_logits(split), self.data(split))

    @torch.no_grad()
    def evaluate(self, mask, split: str = "validation", metric: Metric | None = None) -> float:
        """Mean metric of the circuit ``mask`` on ``split`` (in the metric's own sign)."""
        logits = self.engine(split).logits(mask, self.data(split).positions)
        return float(self.per_prompt(logits, split, metric).mean())
