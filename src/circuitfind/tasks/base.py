"""What a task gives circuitfind: a model, clean and corrupted prompts, positions, metrics, and
(where known) the ground-truth circuit.  Methods see only this interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..core.data import TaskData  # noqa: F401 - a task's splits, defined below the metrics that read them
from ..core.graph import Graph
from ..core.metrics import Metric

# A model view (models/view): a TransformerLens 3 HookedTransformer, or a TransformerLens 4
# TransformerBridge wrapped as one.
ModelView = object


@dataclass
class Task:
    name: str
    model: ModelView
    validation: TaskData  # what methods search on
    test: TaskData  # what reported metrics use
    metrics: dict[str, Metric]
    default_metric: str
    split_embed: bool = False  # token and positional embeddings as two graph nodes (tracr)
    # The ground-truth circuit as edge names of the qkv graph, or None where the task has none.
    ground_truth_edges: Callable[[Graph], set[str]] | None = None

    def metric(self, name: str | None) -> Metric:
        name = name or self.default_metric
        if name not in self.metrics:
            raise ValueError(f"task {self.name} has no metric {name!r}; choose one of {', '.join(self.metrics)}")
        return self.metrics[name]
