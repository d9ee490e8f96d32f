"""One split of a task's prompts: what a patched forward runs on and what a metric reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


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
