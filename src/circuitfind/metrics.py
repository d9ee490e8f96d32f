"""Task metrics: functions of the patched model's logits at the task's positions.

Every metric returns one value per prompt ([batch]); callers average.  ``lower_is_better`` tells ACDC
which way a change hurts: it always works with a loss (the metric, or minus it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .tasks.base import TaskData

# patched logits [batch, k, vocab], clean logits of the full model [batch, k, vocab], the split the
# logits come from (task metrics read its extras: answer ids, labels) -> [batch]
MetricFn = Callable[[torch.Tensor, torch.Tensor, Optional["TaskData"]], torch.Tensor]


@dataclass(frozen=True)
class Metric:
    name: str
    fn: MetricFn
    lower_is_better: bool = True

    def per_prompt(self, logits: torch.Tensor, clean_logits: torch.Tensor,
                   data: TaskData | None = None) -> torch.Tensor:
        return self.fn(logits, clean_logits, data)

    def loss(self, logits: torch.Tensor, clean_logits: torch.Tensor, data: TaskData | None = None) -> torch.Tensor:
        """The mean over prompts, signed so that lower is always better."""
        value = self.fn(logits, clean_logits, data).mean()
        return value if self.lower_is_better else -value


def kl_divergence(logits: torch.Tensor, clean_logits: torch.Tensor, data: TaskData | None = None) -> torch.Tensor:
    """KL(clean full model || patched), summed over the vocabulary, averaged over the positions."""
    clean_logp = F.log_softmax(clean_logits.double(), dim=-1)
    logp = F.log_softmax(logits.double(), dim=-1)
    kl = (clean_logp.exp() * (clean_logp - logp)).sum(-1)
    return kl.mean(-1).to(logits.dtype)


def l2_distance(logits: torch.Tensor, clean_logits: torch.Tensor, data: TaskData | None = None) -> torch.Tensor:
    """Mean squared difference of the patched and the clean outputs (tracr's numerical outputs)."""
    return ((logits - clean_logits) ** 2).flatten(1).mean(-1)


KL = Metric("kl", kl_divergence)
L2 = Metric("l2", l2_distance)
