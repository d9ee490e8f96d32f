"""What removed edges carry (``Ablation``), and each sender's difference from its ablated value, stored once per run, and read as mask-weighted sums.

Only the differences ``value_s - ablated_s`` are stored, one ``[batch, pos, d_model]`` slab per
sender, and a layer's receivers are read with one matmul of their removed-mask rows against that
stack.  A run restarted at a stage (ACDC's edge tests) shares the unpatched run's slabs below it
(``SenderCache``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .placement import fetched_weighted_sum


@dataclass
class Ablation:
    """What a removed edge carries instead of the sender's value.

    ``senders``: [n_senders, batch|1, pos, d_model]; ``qkv``: [n_layers, 3, batch|1, pos, n_heads, d_head]
    (a size-1 batch broadcasts: zero and mean ablation)."""

    kind: str
    senders: torch.Tensor
    qkv: torch.Tensor
    position_order: tuple[int, ...] | None = None  # the corrupted run's shuffled positions, if any


class SenderDiffs:
    """Each sender's ``value - ablated`` [batch, pos, d_model] in this run, and sums of them weighted
    by mask rows.

    A run restarted from a cache reads the senders below its start stage from the cache's
    ``prefix`` (shared, never copied) and writes the rest into its own ``body``.  A batched run
    (``n_candidates`` masks at once, batch = n_candidates x prompts, candidate-major) shares that
    prefix among its candidates: it holds the prompts once.  Without gradients the body is one
    buffer written in place (one matmul per read); when gradients flow through the mask (SP,
    attribution) in-place writes would break autograd, so each layer's block is kept as its own
    tensor and reads sum one matmul per block."""

    def __init__(self, body: torch.Tensor, differentiable: bool, prefix: torch.Tensor | None = None,
                 n_candidates: int = 1, fetch: bool = False):
        """``fetch``: the stored slabs (body buffer, prefix) live on the CPU and are moved to the
        mask's device slab group by slab group as they are read (see ``activation_device``)."""
        self.differentiable = differentiable
        self.fetch = fetch
        self.buffer = None if differentiable else body
        self.blocks: list[tuple[int, torch.Tensor]] = []  # (first body slot, [n, batch, pos, d])
        self.prefix = prefix
        self.n_prefix = 0 if prefix is None else prefix.shape[0]
        self.n_candidates = n_candidates
        # post-norm models: layer -> (sum of its heads + b_O, its post-normed attention output)
        self.attn_sums: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def write(self, start: int, values: torch.Tensor) -> None:
        start -= self.n_prefix
        assert start >= 0, "a restarted run rewrote a cached sender"
        if self.differentiable:
            self.blocks.append((start, values))
        else:
            self.buffer[start:start + values.shape[0]] = values

    def weighted(self, weights: torch.Tensor, n_senders: int, first: int = 0) -> torch.Tensor:
        """sum_s weights[r, s] * diff_s over senders ``first`` to ``n_senders`` (``weights`` is
        indexed by sender slot) -> [rows, batch*pos*d] (batch: the prompts once when only the
        shared prefix is read, else every candidate's)."""
        rows = weights.shape[0]
        shared = None
        if self.prefix is not None and first < self.n_prefix:
            n = min(n_senders, self.n_prefix)
            shared = weighted_sum(weights[:, first:n], self.prefix[first:n], self.fetch)
            if n_senders <= self.n_prefix:
                return shared
        own_first, own_end = max(first - self.n_prefix, 0), n_senders - self.n_prefix
        own_weights = weights[:, self.n_prefix:n_senders]  # column i: body slot i
        if not self.differentiable:
            own = weighted_sum(own_weights[:, own_first:], self.buffer[own_first:own_end], self.fetch)
        else:
            own = None
            for start, block in self.blocks:
                lo, hi = max(start, own_first), min(start + block.shape[0], own_end)
                if lo >= hi:
                    continue
                part = own_weights[:, lo:hi] @ block[lo - start:hi - start].flatten(1)
                own = part if own is None else own + part
        if shared is None:
            return own
        return (own.view(rows, self.n_candidates, -1) + shared.unsqueeze(1)).view(rows, -1)

    def first_blocks(self, n_senders: int) -> list[torch.Tensor]:
        """The first ``n_senders`` senders' diffs as the blocks that hold them, in slot order (a
        differentiable full run: there the blocks are every sender)."""
        assert self.differentiable and self.prefix is None, "blocks are a differentiable full run's"
        blocks = [block[:n_senders - start] for start, block in self.blocks if start < n_senders]
        assert sum(len(b) for b in blocks) == n_senders, "the sender blocks do not cover the senders read"
        return blocks


def weighted_sum(weights: torch.Tensor, slabs: torch.Tensor, fetch: bool = False) -> torch.Tensor:
    """weights [rows, n] @ slabs [n, ...] -> [rows, prod(...)].  ACDC's masks are sparse on one side:
    gather the few slabs with a nonzero weight rather than multiply zeros (a slab is
    batch*pos*d_model numbers).  ``fetch``: the slabs are stored on the CPU (see
    ``fetched_weighted_sum``)."""
    used = weights.any(0).nonzero().flatten()
    if len(used) <= weights.shape[1] // 4:
        weights, slabs = weights[:, used], slabs.index_select(0, used.to(slabs.device))
    if fetch:
        return fetched_weighted_sum(weights, slabs)
    return weights @ slabs.flatten(1)


@dataclass
class SenderCache:
    """One run's per-sender differences from the ablation and its residual stream at each stage
    (stage 2l: before layer l's attention, 2l+1: before its MLP, 2L: the final residual).

    ACDC visits receivers from the output back, so every edge it has removed lies downstream of
    the receiver under test: the senders below that receiver still hold their values from the
    unpatched run.  One cached run therefore lets every edge test start at the receiver's layer."""

    diff: torch.Tensor
    resid: list[torch.Tensor]
    qkv: list[torch.Tensor]  # per recomputed layer: [3, batch, pos, n_heads, d_head]
    attn_sums: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None  # post-norm models (SenderDiffs)
