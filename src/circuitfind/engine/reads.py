"""How the fast engine reads its receivers' inputs: each distinct mask row once, from the nearer side.

``plain.py`` reads every receiver as ``resid - removed_row @ diffs``.  The engine gets the same
numbers with less work:

- only receivers whose row removes something are read at all (the others read ``resid``);
- receivers with the same mask row read one input: each distinct row is summed (and later
  normalised) once.  A sparse circuit leaves most of a layer's head inputs with every edge removed,
  and on the node graph all receivers of a layer share one row.  (With gradients every row stays
  its own, so that each receiver's mask gets its own gradient.)
- "mostly removed" rows are read from the ablated side, ``ablated_resid + kept_row @ diffs``:
  each sum runs over the fewer senders, and a row with everything removed is exact (no
  cancellation of a sender's value against itself, which layer norm would amplify under zero
  ablation).

``ReceiverReads`` is the reader of pre-norm blocks, whose receivers' inputs are linear in their
rows; ``postnorm.PostNormReads`` replaces the linear read for Gemma-2's post-norm blocks.
"""

from __future__ import annotations

import torch

from ..core.graph import Graph
from .layout import with_prompts
from .model_reads import ModelReads
from .placement import Storage
from .senders import Ablation, SenderDiffs


class ReceiverReads:
    """The receivers' inputs of one engine (``ops``: its model, ``storage``: where the ``ablation``
    and the runs' sender differences live)."""

    # a receiver's input is linear in its mask row: the gradient fast paths apply, and a run whose
    # final residual removes every edge needs no forward
    linear = True

    def __init__(self, ops: ModelReads, graph: Graph, ablation: Ablation, storage: Storage):
        self.ops, self.graph, self.ablation, self.storage = ops, graph, ablation, storage
        self._ablated_resid: dict[tuple, torch.Tensor] = {}
        self._last_prefix: tuple[int, torch.Tensor | None] = (0, None)  # see _prefix_sum

    def changed_inputs(self, r: torch.Tensor, row: int, resid: torch.Tensor,
                       diff: SenderDiffs) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Of the receivers whose removed-mask rows are ``r`` [n, n_senders] (one layer's heads or
        one MLP, or several candidates' copies of them; ``row`` is the first one's row), those
        whose input is not simply ``resid`` (something was removed), as (offsets into ``r``,
        the distinct inputs among them [n_distinct, batch, pos, d_model], and which of those each
        offset reads [n_changed])."""
        differentiable = torch.is_grad_enabled() and r.requires_grad
        if differentiable:
            # A gradient needs every input read through its mask row, even where nothing is removed
            # yet (at the full mask, the point attribution patching differentiates at).
            changed = torch.arange(len(r), device=r.device)
        else:
            changed = r.any(1).nonzero().flatten()
        if len(changed) == 0:
            return changed, None, None
        r = r[changed]
        if differentiable:
            rows, source = r, torch.arange(len(r), device=r.device)
        else:
            rows, source = torch.unique(r, dim=0, return_inverse=True)
        return changed, self.read_rows(rows, row, resid, diff), source

    def read_rows(self, r: torch.Tensor, row: int, resid: torch.Tensor, diff: SenderDiffs) -> torch.Tensor:
        """The inputs [n, batch, pos, d_model] of receivers with removed-mask rows ``r`` [n, n_senders].

        A receiver that keeps most of its edges is read as ``resid - removed @ diff``; one that
        removes most as ``ablated_resid + kept @ diff``."""
        n_senders = r.shape[1]
        mostly_removed = r.sum(1) > n_senders / 2

        def keeping(rows):  # resid - removed @ diff
            return resid - diff.weighted(rows, n_senders).view(len(rows), *resid.shape)

        def from_ablated(rows):  # kept @ diff + ablated_resid [1, prompts or 1, pos, d_model]
            return with_prompts(torch.add, diff.weighted(1 - rows, n_senders).view(len(rows), *resid.shape),
                                self.ablated_resid(n_senders, row), diff.n_candidates, 1)

        if not mostly_removed.any():
            return keeping(r)
        if mostly_removed.all():
            return from_ablated(r)
        # each group through its own sum, then back in the order of ``r``
        order = torch.cat([(~mostly_removed).nonzero().flatten(), mostly_removed.nonzero().flatten()])
        x = torch.cat([keeping(r[~mostly_removed]), from_ablated(r[mostly_removed])])
        return x[torch.argsort(order)]

    def input_value(self, r: torch.Tensor, row: int, resid: torch.Tensor, diff: SenderDiffs) -> torch.Tensor:
        """``resid - r @ diffs`` for one gradient-free row ``r`` [n_senders] (the gradient fast paths
        attach the row's gradient themselves), computed so that its own backward stays small:
        autograd through ``r @ diffs`` would give every diff an [n_senders, batch, pos, d_model]
        gradient.  A constant row c (EAP-IG's alpha * 1) is ``lerp(resid, ablated_resid, c)`` (the
        diffs sum to ``resid - ablated_resid``; exact at c = 1); a sparse one (the inputs path)
        reads only its nonzero senders; any other (SP's gates) the generic way."""
        if bool((r == r[0]).all()):
            if r[0] == 0:
                return resid
            return torch.lerp(resid, self.ablated_resid(len(r), row)[0], r[0])
        if (r != 0).sum() > len(r) // 4:  # dense (SP's gates) or mostly removed: the generic read
            return self.changed_inputs(r[None], row, resid, diff)[1][0]
        x, start = resid, 0
        for block in diff.first_blocks(len(r)):
            used = r[start:start + len(block)].nonzero().flatten()
            if len(used):
                weighted = r[start + used] @ block.index_select(0, used).flatten(1)
                x = x - weighted.view(resid.shape)
            start += len(block)
        return x

    def ablated_resid(self, n_senders: int, row: int, centred: bool = False) -> torch.Tensor:
        """The residual a receiver would read with every edge removed: the ablated values of the
        senders it sees plus the attention biases written before it (never patched); ``centred``:
        less its mean over d_model."""
        key = (n_senders, row, centred)
        if key not in self._ablated_resid:
            g = self.graph
            layer = g.n_layers if row == g.resid_post_row else row // g.rows_per_layer
            own_layer_bias = (g.arch.has_mlps and not g.arch.parallel
                              and row == g.mlp_row(min(layer, g.n_layers - 1)))
            biases = sum((self.ops.b_O(l) for l in range(layer + (1 if own_layer_bias else 0))),
                         torch.zeros((), dtype=self.ops.dtype, device=self.ops.device))
            if not centred:
                self._ablated_resid[key] = (self.storage.summed(self.ablation.senders[:n_senders]) + biases).unsqueeze(0)
            else:  # the nodes-only forward's: the sum continued from the last one (its reads come in order)
                x = self._prefix_sum(n_senders) + biases
                self._ablated_resid[key] = (x - x.mean(-1, keepdim=True)).unsqueeze(0)
        return self._ablated_resid[key]

    def _prefix_sum(self, n_senders: int) -> torch.Tensor:
        """The first ``n_senders`` ablated senders' sum, continued from the last one asked for where
        that one was shorter (one pass over the senders for a forward's reads, not one per read)."""
        start, total = self._last_prefix
        if start > n_senders or total is None:
            start, total = 0, None
        if n_senders > start:
            part = self.storage.summed(self.ablation.senders[start:n_senders])
            total = part if total is None else total + part
        self._last_prefix = (n_senders, total)
        return total

    def attention_output(self, layer: int, result: torch.Tensor, resid: torch.Tensor, diff: SenderDiffs,
                         n_candidates: int) -> torch.Tensor:
        """The residual after layer ``layer``'s heads wrote ``result`` [H, batch, pos, d_model]."""
        return with_prompts(torch.add, result.sum(0), resid, n_candidates, 0) + self.ops.b_O(layer)

    def mlp_output(self, layer: int, out: torch.Tensor) -> torch.Tensor:
        """What layer ``layer``'s MLP writes into the residual stream, given its output."""
        return out
