"""What a task gives circuitfind: a model, clean and corrupted prompts, positions, metrics, and
(where known) the canonical circuit.  Methods see only this interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..core.graph import Graph
from ..core.metrics import Metric

# A model view (models/view): a TransformerLens 3 HookedTransformer, or a TransformerLens 4
# TransformerBridge wrapped as one.
ModelView = object


@dataclass
class TaskData:
    """One split: clean and corrupted prompts of identical shape, and the positions the metrics
    read ([batch, k]).  ``extras`` holds task-specific tensors (answer ids, ...)."""

    clean: torch.Tensor
    corrupted: torch.Tensor
    positions: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if self.clean.shape != self.corrupted.shape:
            raise ValueError(
                f"clean prompts {tuple(self.clean.shape)} and corrupted prompts "
                f"{tuple(self.corrupted.shape)} must have the same shape"
            )
        if self.positions.dim() != 2 or self.positions.shape[0] != self.clean.shape[0]:
            raise ValueError(f"positions must be [batch, k], got {tuple(self.positions.shape)}")
        seq_len = self.clean.shape[1]
        if self.positions.numel() and (self.positions.min() < 0 or self.positions.max() >= seq_len):
            raise ValueError(f"metric positions fall outside the prompts (length {seq_len})")

    def to(self, device) -> "TaskData":
        return TaskData(self.clean.to(device), self.corrupted.to(device), self.positions.to(device),
                        {k: v.to(device) for k, v in self.extras.items()})


@dataclass
class Task:
    name: str
    model: ModelView
    validation: TaskData  # what methods search on
    test: TaskData  # what reported metrics use
    metrics: dict[str, Metric]
    default_metric: str
    split_embed: bool = False  # token and positional embeddings as two graph nodes (tracr)
    # The canonical circuit as edge names of the qkv graph, or None where the task has none.
    canonical_edges: Callable[[Graph], set[str]] | None = None

    def metric(self, name: str | None) -> Metric:
        name = name or self.default_metric
        if name not in self.metrics:
            raise ValueError(f"task {self.name} has no metric {name!r}; choose one of {', '.join(self.metrics)}")
        return self.metrics[name]
