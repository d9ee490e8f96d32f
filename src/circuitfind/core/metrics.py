"""Task metrics: functions of the patched model's logits at the task's positions.

Every metric returns one value per prompt ([batch]); callers average.  ``lower_is_better`` tells ACDC
which way a change hurts: it always works with a loss (the metric, or minus it).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .data import TaskData

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
    """KL(clean full model || patched), summed over the vocabulary, averaged over the positions.

    Without gradients (a curve's circuits, ACDC's tests), each position's sum is taken in float64
    from the logits' difference d = z - c from the clean ones, as ``log(sum_v p_v exp(d_v)) -
    sum_v p_v d_v`` (p the clean probabilities; the same number as ``sum_v p_v (log p_v -
    log_softmax(z)_v)``, which the gradient path computes), a few positions at a time so that the
    float64 terms stay in cache: no [positions, vocab] temporaries, and no cancellation of large
    terms when z is near c.  Logits smaller than ``KL_CHUNKED_FROM`` values (a small vocabulary,
    where the chunks would cost more than they save) take the log_softmax sum.  ``logits`` may hold
    several candidates' logits before the clean shape."""
    if (torch.is_grad_enabled() and (logits.requires_grad or clean_logits.requires_grad)) \
            or clean_logits.numel() < KL_CHUNKED_FROM:  # small: held in cache anyway
        return _kl_log_softmax(logits, clean_logits)
    n = clean_logits.dim()
    if logits.shape == clean_logits.shape:
        return _kl_in_chunks(logits, clean_logits)
    if logits.dim() > n and logits.shape[-n:] == clean_logits.shape:  # candidates first
        per_candidate = [_kl_in_chunks(z, clean_logits) for z in logits.reshape(-1, *clean_logits.shape)]
        return torch.stack(per_candidate).view(logits.shape[:-2])
    return _kl_log_softmax(logits, clean_logits)  # any other broadcast


def _kl_log_softmax(logits: torch.Tensor, clean_logits: torch.Tensor) -> torch.Tensor:
    """KL summed over the vocabulary as ``sum_v p_v (log p_v - log_softmax(z)_v)``, differentiable."""
    clean_logp, clean_p, _ = _clean_terms(clean_logits)
    logp = F.log_softmax(logits.double(), dim=-1)
    kl = (clean_p * (clean_logp - logp)).sum(-1)
    return kl.mean(-1).to(logits.dtype)


def _kl_in_chunks(logits: torch.Tensor, clean_logits: torch.Tensor) -> torch.Tensor:
    """``kl_divergence`` without gradients, for logits of the clean logits' shape."""
    _, clean_p, clean = _clean_terms(clean_logits)
    vocab = logits.shape[-1]
    z, c, p = logits.reshape(-1, vocab), clean.reshape(-1, vocab), clean_p.reshape(-1, vocab)
    kl = torch.empty(z.shape[0], dtype=torch.float64, device=logits.device)
    step = max(1, KL_CHUNK_VALUES // vocab)  # positions at a time: their float64 terms stay in cache
    ones = torch.ones(min(step, len(z)), vocab, 1, dtype=torch.float64, device=logits.device)
    for i in range(0, len(z), step):
        d = torch.sub(z[i:i + step], c[i:i + step])  # float64, exact
        weighted = p[i:i + step].unsqueeze(-2)  # [n, 1, vocab]: sums over the vocabulary as products
        cross = (weighted @ d.unsqueeze(-1))[:, 0, 0]
        top = d.amax(-1, keepdim=True)
        mean_exp = (weighted @ d.sub_(top).exp_().unsqueeze(-1))[:, 0, 0]
        # divided by sum_v p_v (1 up to rounding), summed the same way: the clean logits give exactly 0
        mass = (weighted @ ones[:len(d)])[:, 0, 0]
        kl[i:i + step] = (mean_exp / mass).log_() + top[:, 0] - cross
    return kl.view(logits.shape[:-1]).mean(-1).to(logits.dtype)


KL_CHUNKED_FROM = 2 ** 20  # clean logits of this many values and more: the sum in chunks
KL_CHUNK_VALUES = 2 ** 16  # float64 values of one chunk of KL's gradient-free sum (512 KiB: in L2 cache)


# A curve evaluates hundreds of circuits against the same clean logits; on a 50k vocabulary their
# log_softmax and exp in float64 took over half of KL's time.  Held per clean-logits tensor (by id,
# checked through a weak reference, so a new tensor at a reused address is not mistaken for it).
_CLEAN_TERMS: dict[int, tuple] = {}


def _clean_terms(clean_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p, p, the logits) of ``clean_logits`` in float64, computed once per tensor (again if it
    is changed in place; every time when gradients flow through it)."""
    if clean_logits.requires_grad:
        logp = F.log_softmax(clean_logits.double(), dim=-1)
        return logp, logp.exp(), clean_logits.double()
    held = _CLEAN_TERMS.get(id(clean_logits))
    if held is None or held[0]() is not clean_logits or held[1] != clean_logits._version:
        for key in [k for k, v in _CLEAN_TERMS.items() if v[0]() is None]:  # tensors since freed
            del _CLEAN_TERMS[key]
        logp = F.log_softmax(clean_logits.double(), dim=-1)
        held = _CLEAN_TERMS[id(clean_logits)] = (weakref.ref(clean_logits), clean_logits._version, logp,
                                                 logp.exp(), clean_logits.double())
    return held[2:]


def l2_distance(logits: torch.Tensor, clean_logits: torch.Tensor, data: TaskData | None = None) -> torch.Tensor:
    """Mean squared difference of the patched and the clean outputs (tracr's numerical outputs)."""
    return ((logits - clean_logits) ** 2).flatten(1).mean(-1)


KL = Metric("kl", kl_divergence)
L2 = Metric("l2", l2_distance)
