"""How guided ACDC sizes its groups and splits the ones that fail (``methods/acdc_guided.py``).

Pure arithmetic on keep rates, attribution weights and observed loss rises: no model, no graph.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

# Group sizes: with a fraction p of the next edges kept, a group of 2^floor(log2((1 - p) / p)) edges
# (Hwang's generalised binary splitting; one edge at a time once p >= 1/3) costs about the fewest
# tests per edge.  p is estimated from the last WINDOW edges the block decided, with the keep rate of
# everything decided before as PRIOR_WEIGHT edges' worth of evidence: where attribution orders well,
# the weak end passes and the groups grow, the strong end fails and they shrink to single edges.
WINDOW = 16
PRIOR_WEIGHT = 2.0


def group_size(keep_rate: float) -> int:
    if keep_rate >= 1 / 3:
        return 1
    return 2 ** int(math.floor(math.log2((1 - keep_rate) / keep_rate)))


def keep_chances(weights: torch.Tensor, expected_kept: float) -> torch.Tensor:
    """``split=mass``: each edge's chance of being kept, for edges with attribution ``weights``: the
    expected number kept, spread half in proportion to attribution and half evenly (so a wrong ranking
    costs a bounded number of extra tests), at most 1."""
    share = torch.full_like(weights, 1 / len(weights))
    total = float(weights.sum())
    if total > 0 and math.isfinite(total) and bool((weights >= 0).all()):
        share = 0.5 * weights / total + 0.5 * share
    return (expected_kept * share).clamp(max=1.0)


def capped_chances(chances: torch.Tensor, predicted_rises: torch.Tensor, tau: float) -> torch.Tensor:
    """Chances of being kept, at most each edge's predicted rise over tau: an edge is kept only where
    removing it alone raises the loss by tau or more, and for a rise that is nonnegative and right on
    average, Markov's inequality bounds the chance of that by prediction / tau (edges whose removal
    attribution finds harmless are then carried and joined freely)."""
    return torch.minimum(chances, predicted_rises.clamp(min=0) / tau)


def mass_group_size(chances: torch.Tensor) -> int:
    """The weakest edges whose chances sum to at most ln 2 (a group that passes about half the time,
    as ``group_size`` for equal chances); one edge when the weakest is kept a third of the time."""
    if float(chances[0]) >= 1 / 3:
        return 1
    return max(1, int((chances.cumsum(0) <= math.log(2)).sum()))


def mass_split(chances: torch.Tensor) -> int:
    """Where a failed group splits: the weakest edges holding at most half its chance of a kept edge
    (bisection when chances are equal; the strongest edge alone when it holds more than half)."""
    total = float(chances.sum())
    if not total > 0:
        return len(chances) // 2
    cut = int((chances.cumsum(0) <= total / 2).sum())
    return min(max(cut, 1), len(chances) - 1)


class LossRise:
    """``budget``: a group's loss rise predicted from attribution, calibrated on the exact tests.

    A group can fail without holding a kept edge: each of its edges raises the loss a little, and
    together they raise it by tau or more (on GPT-2's shape at tau 0.001, the output's 145 removable
    inputs raise it by 1e-4 each).  The predicted rise of a group is ``scale`` x its attribution sum,
    ``scale`` the observed rises over the attribution sums of every group tested so far (rises
    below 0 count as 0); a group's predicted rise fits ``limit`` (budget x tau): the weakest edges
    that fit (``fits``) or, once calibrated, edges packed to it (``pack``), and a group that fails
    is cut into runs that each fit.  Before the first rise is observed, or with ``limit`` 0,
    nothing is limited."""

    def __init__(self, limit: float):
        self.limit, self.observed, self.attributed = limit, 0.0, 0.0

    def observe(self, attributed: float, delta: float) -> bool:
        """Count a tested group's attribution sum and its rise; False where it cannot calibrate
        (no attribution, or a value that is not finite)."""
        if not (attributed > 0 and math.isfinite(attributed) and math.isfinite(delta)):
            return False
        self.attributed += attributed
        self.observed += max(delta, 0.0)
        return True

    @property
    def scale(self) -> float | None:
        """The observed rise per unit of attribution (None before a rise is observed)."""
        return self.observed / self.attributed if self.observed > 0 and self.attributed > 0 else None

    def predict(self, attributed):
        """The rise the limit expects of a group with this attribution sum (or of each of a tensor of
        sums); nan where nothing is limited."""
        return attributed * self.observed / self.attributed if self.calibrated else math.nan

    @property
    def calibrated(self) -> bool:
        """Whether groups are limited (a rise observed, and a limit set)."""
        return self._allowance() is not None

    def pack(self, weights: Sequence[float], used: float = 0.0) -> list[int]:
        """The next group from edges with attribution ``weights`` (weakest first), as indices: the
        strongest edges that still fit the limit together (beside ``used`` attribution already in the
        group), then the weakest to fill what is left of it (first fit, largest first); the weakest
        alone when none fits."""
        allowance = self._allowance()
        picked, total = [], max(used, 0.0)
        for i in reversed(range(len(weights))):
            w = max(float(weights[i]), 0.0)
            if allowance is None or total + w <= allowance:
                picked.append(i)
                total += w
        return sorted(picked) or [0]

    def holds(self, attributed: float, limit: float | None = None) -> bool:
        """Whether a group of this attribution sum fits the limit (or ``limit``, a rise; always, when
        nothing is limited)."""
        allowance = self._allowance(limit)
        return allowance is None or attributed <= allowance

    def _allowance(self, limit: float | None = None) -> float | None:
        """The attribution sum that fits the limit, or ``limit`` (None: no limit)."""
        if self.limit <= 0 or self.observed <= 0 or self.attributed <= 0:
            return None
        return (self.limit if limit is None else limit) * self.attributed / self.observed

    def fits(self, weights: Sequence[float]) -> int:
        """How many of the weakest edges (``weights`` in order) fit the limit: at least one."""
        return self.partition(weights)[0] if len(weights) else 0

    def partition(self, weights: Sequence[float]) -> list[int]:
        """Sizes of consecutive runs of ``weights`` that each fit the limit (greedy, each at least one)."""
        allowance = self._allowance()
        if allowance is None:
            return [len(weights)]
        sizes, total = [0], 0.0
        for w in weights:
            w = max(float(w), 0.0)
            if sizes[-1] and total + w > allowance:
                sizes.append(0)
                total = 0.0
            sizes[-1] += 1
            total += w
        return sizes
