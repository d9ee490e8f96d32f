"""Exact losses of candidate circuits for guided ACDC (``methods/acdc_guided.py``): each distinct
circuit is evaluated once, and a forward may run a planned batch of the circuits the search reads
next."""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import torch

# (candidate masks [k, n_edges], the stage at which they first differ from the unpatched run) -> losses
LossFn = Callable[[torch.Tensor, int], Sequence[float]]


def _key(mask: torch.Tensor) -> bytes:
    return hashlib.blake2b((mask > 0.5).cpu().numpy().tobytes(), digest_size=16).digest()


class ExactLosses:
    """Exact losses of candidate circuits: each distinct circuit is evaluated once (``n_fresh``
    counts them); a forward runs a planned batch of circuits and their losses are read on demand.
    ``replay``: losses of a checkpointed run's first circuits, answered without forwards."""

    def __init__(self, losses: LossFn, n_candidates: int, replay: Sequence[float] = ()):
        self.losses, self.n_candidates, self.replay = losses, n_candidates, list(replay)
        self.known: dict[bytes, float] = {}
        self.pending: dict[bytes, tuple[Sequence[float], int]] = {}
        self.log: list[float] = []
        self.n_forwards = 0

    @property
    def replaying(self) -> bool:
        return len(self.log) < len(self.replay)

    def loss(self, mask: torch.Tensor, stage: int, plan: Callable[[], list[torch.Tensor]]) -> tuple[float, bool]:
        """The loss of circuit ``mask`` and whether it was evaluated now (False: known already)."""
        key = _key(mask)
        if key in self.known:
            return self.known[key], False
        if self.replaying:
            value = self.replay[len(self.log)]
        else:
            if key not in self.pending:
                masks = [mask] + (plan()[:self.n_candidates - 1] if self.n_candidates > 1 else [])
                batch = self.losses(torch.stack(masks), stage)
                self.n_forwards += 1
                self.pending = {}
                for row, candidate in enumerate(masks):
                    self.pending.setdefault(_key(candidate), (batch, row))
            batch, row = self.pending.pop(key)
            value = float(batch[row])
        self.known[key] = value
        self.log.append(value)
        return value, True


def prefix_plan(mask: torch.Tensor, group: list[int], n: int, split: Callable[[int, int], int]) -> list[torch.Tensor]:
    """The circuits ``mask`` without the first j edges of ``group``, for j at the split points of the
    group, then of its parts, and so on (``split(lo, hi)``: where the edges ``group[lo:hi]`` split):
    the circuits the search reads next while weak parts pass."""
    lengths: list[int] = []
    level = [(0, len(group))]
    while level and len(lengths) < n:
        deeper = []
        for lo, hi in level:
            if hi - lo > 1:
                j = split(lo, hi)
                lengths.append(j)
                deeper += [(lo, j), (j, hi)]
        level = deeper
    out = []
    for j in lengths[:n]:
        candidate = mask.clone()
        candidate[group[:j]] = 0
        out.append(candidate)
    return out
