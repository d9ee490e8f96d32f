"""Post-norm blocks (Gemma-2's ``use_normalization_before_and_after``): the receiver reads that differ.

Layer l adds ``ln1_post(sum_h head_h + b_O)`` to the residual stream, not a sum over its heads.
Heads stay senders, and receiver r reads each earlier layer's attention output as that layer's
post-norm of r's own mix of the layer's heads,

    ln1_post_l( sum_h [m_rh * value_h + (1 - m_rh) * ablated_h] + b_O_l ),

plus every other sender (embeddings, MLPs, whose values ``ln2_post`` already normalised) as in
``ReceiverReads``.  A receiver's input is then not linear in its mask row: the gradient fast paths
and the no-forward output do not apply (``linear = False``).
"""

from __future__ import annotations

import torch

from ..core.graph import Graph
from .layout import with_prompts
from .model_reads import ModelReads
from .placement import Storage
from .reads import ReceiverReads
from .senders import Ablation, SenderDiffs


class PostNormReads(ReceiverReads):
    """``ReceiverReads`` for post-norm blocks: the linear read, each layer's attention output and
    the MLP's output are replaced; the choice of changed receivers and of distinct rows is kept."""

    linear = False

    def __init__(self, ops: ModelReads, graph: Graph, ablation: Ablation, storage: Storage):
        super().__init__(ops, graph, ablation, storage)
        self._head_slot = torch.zeros(graph.n_senders, dtype=torch.bool, device=ops.device)
        for layer in range(graph.n_layers):
            self._head_slot[graph.head_slots(layer)] = True
        self._ablated_attn: dict[int, torch.Tensor] = {}

    def read_rows(self, r: torch.Tensor, row: int, resid: torch.Tensor, diff: SenderDiffs) -> torch.Tensor:
        """Nothing removed is the model's residual stream; everything removed is the ablated run's
        (each layer's ablated output is the post-norm of its ablated heads); the input stays
        differentiable in the mask.  A receiver that keeps most of its edges starts from ``resid``
        and replaces the attention output of each layer it removes a head of; one that removes most
        starts from the ablated values and rebuilds every layer's output from the heads it keeps
        (exact when everything is removed, as in ``ReceiverReads.read_rows``)."""
        n_senders, g, k = r.shape[1], self.graph, diff.n_candidates
        shape = (len(r), -1, *resid.shape[1:])
        heads = self._head_slot[:n_senders]
        layers = [l for l in range(g.n_layers) if g.head_slots(l).stop <= n_senders]

        def plus(x, y):  # x [rows, candidates*prompts | prompts, ...] + y [rows | 1, prompts | 1, ...]
            return with_prompts(torch.add, x, y, k, 1)

        def keeping(removed):
            x = resid.unsqueeze(0) - diff.weighted(removed * ~heads, n_senders).view(shape)
            for l in layers:
                span, (S, A) = g.head_slots(l), diff.attn_sums[l]
                if not removed[:, span].any() and not removed.requires_grad:
                    continue  # this layer's output is the model's
                mixed = plus(-diff.weighted(removed, span.stop, span.start).view(shape), S.unsqueeze(0))
                x = plus(x, self.ops.blocks[l].ln1_post(mixed) - A.unsqueeze(0))
            return x

        def from_ablated(kept):
            x = plus(diff.weighted(kept * ~heads, n_senders).view(shape), self.ablated_resid(n_senders, row))
            for l in layers:
                span = g.head_slots(l)
                mixed = plus(diff.weighted(kept, span.stop, span.start).view(shape), self.ablated_attn(l).unsqueeze(0))
                x = plus(x, self.ops.blocks[l].ln1_post(mixed))
            return x

        mostly_removed = r.sum(1) > n_senders / 2
        if not mostly_removed.any():
            return keeping(r)
        if mostly_removed.all():
            return from_ablated(1 - r)
        kept_rows = keeping(torch.where(mostly_removed[:, None], 0, r))
        ablated_rows = from_ablated(torch.where(mostly_removed[:, None], 1 - r, 0))
        return torch.where(mostly_removed.view(-1, 1, 1, 1), ablated_rows, kept_rows)

    def ablated_attn(self, layer: int) -> torch.Tensor:
        """The sum of layer ``layer``'s ablated heads and b_O, before ln1_post."""
        if layer not in self._ablated_attn:
            heads = self.storage.summed(self.ablation.senders[self.graph.head_slots(layer)])
            self._ablated_attn[layer] = heads + self.ops.b_O(layer)
        return self._ablated_attn[layer]

    def ablated_resid(self, n_senders: int, row: int) -> torch.Tensor:
        """The ablated values of the senders other than heads (the heads and b_O: ``ablated_attn``)."""
        key = (n_senders, row)
        if key not in self._ablated_resid:
            others = ~self._head_slot[:n_senders].to(self.storage.storage)
            self._ablated_resid[key] = self.storage.summed(self.ablation.senders[:n_senders][others])[None]
        return self._ablated_resid[key]

    def attention_output(self, layer: int, result: torch.Tensor, resid: torch.Tensor, diff: SenderDiffs,
                         n_candidates: int) -> torch.Tensor:
        """``resid + ln1_post(sum_h head_h + b_O)``, the layer's sum and its norm kept for the reads."""
        summed = result.sum(0) + self.ops.b_O(layer)
        diff.attn_sums[layer] = (summed, self.ops.blocks[layer].ln1_post(summed))
        return with_prompts(torch.add, diff.attn_sums[layer][1], resid, n_candidates, 0)

    def mlp_output(self, layer: int, out: torch.Tensor) -> torch.Tensor:
        return self.ops.blocks[layer].ln2_post(out)
