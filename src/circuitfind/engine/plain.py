"""The patched forward, plainly: the maths of a circuit run, and the oracle of every fast path.

A run keeps or removes each edge ``sender -> receiver`` of ``graph``.  Every receiver (a head's
q/k/v input, an MLP's input, the final residual) reads

    input_r = sum over senders s of   m_rs * value_s + (1 - m_rs) * ablated_s      (+ biases)
            = resid - sum_s (1 - m_rs) * (value_s - ablated_s)

where ``resid`` is this run's residual stream (every sender's current value, plus the attention
output biases, which belong to no sender and are never patched), ``m_rs`` the edge's mask value (1
keep, 0 remove, fractions for SP's gates) and ``ablated_s`` the sender's value in the ablation
(``ablation.py``).  Removing a head's q/k/v edge gives the head its ablated query, key or value
(``m * q + (1 - m) * ablated_q``).  Everything else is the model's own code (``model_reads.py``):

    embed;  for each layer: every q/k/v receiver reads its input -> ln1 -> W_Q/W_K/W_V -> the
    ablated q/k/v mixed in -> attention -> each head's output, a sender;  the MLP's receiver reads
    its input -> ln2 -> MLP, a sender;  the final residual reads its input -> unembed.

Post-norm blocks (Gemma-2) normalise the sum of a layer's heads, ``ln1_post(sum_h head_h + b_O)``,
before it enters the residual stream: there a receiver reads each earlier layer's attention output
as that norm of its own mix of the layer's heads (``read`` below).  Parallel blocks (GPT-NeoX,
Pythia) feed the MLP the block's input.

This forward is differentiable in the mask and computes every receiver's input, however little of
it a mask changes.  ``PatchEngine`` (``patch.py``) computes the same thing faster, and the tests
hold it to this function.
"""

from __future__ import annotations

import torch

from ..core.graph import EdgeMask, Graph
from .layout import gather_positions, split_mask
from .model_reads import ModelReads
from .senders import Ablation


def plain_forward(model, graph: Graph, tokens: torch.Tensor, ablation: Ablation,
                  mask: EdgeMask | torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [batch, pos, vocab] of ``model`` on ``tokens`` with ``mask`` over ``graph``'s edges
    (or [batch, k, vocab] at ``positions`` [batch, k]); ``ablation`` from ``make_ablation``."""
    g, ops = graph, ModelReads(model, graph, tokens)
    removed, qkv_mask = split_mask(g, mask, ops.device, ops.dtype)  # 1 - m: [rows, senders], m: [L, 3, H]
    H, senders_ablated = g.n_heads, ablation.senders.to(ops.device)

    diffs: list[torch.Tensor] = []  # value_s - ablated_s, in sender order
    attn_sums: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # post-norms: S_l, ln1_post(S_l)
    is_head = torch.zeros(g.n_senders, dtype=torch.bool, device=ops.device)
    for layer in range(g.n_layers):
        is_head[g.head_slots(layer)] = True

    def read(resid: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The inputs [n, batch, pos, d_model] of receivers with removed-mask rows ``rows`` [n, s]
        (they see the first s senders)."""
        stacked = torch.stack(diffs[:rows.shape[1]])
        if not ops.post_norm:
            return resid - torch.einsum("rs,sbpd->rbpd", rows, stacked)
        # post-norms: a head sender enters only through its layer's norm of the receiver's own mix
        x = resid - torch.einsum("rs,sbpd->rbpd", rows * ~is_head[:rows.shape[1]], stacked)
        for layer, (summed, normed) in attn_sums.items():
            span = g.head_slots(layer)
            mixed = summed - torch.einsum("rs,sbpd->rbpd", rows[:, span], stacked[span])
            x = x + ops.blocks[layer].ln1_post(mixed) - normed
        return x

    embeds = ops.embed(tokens)
    diffs += [value - ablated for value, ablated in zip(embeds, senders_ablated)]
    resid = sum(embeds[1:], embeds[0])
    for layer in range(g.n_layers):
        block, block_input = ops.blocks[layer], resid
        # attention: each head's q, k and v input is a receiver of its own
        first = layer * g.rows_per_layer
        x = read(resid, removed[first:first + 3 * H, :g.n_senders_before_heads(layer)])
        W, b = ops.qkv_weights(layer)  # [3, H, d_model, d_head], [3, (pos,) H, d_head]
        normed = block.ln1(x).view(3, H, *x.shape[1:])
        qkv = torch.einsum("whbpd,whde->wbphe", normed, W) + (b[:, None] if b.dim() == 4 else b[:, None, None])
        kept = qkv_mask[layer].view(3, 1, 1, H, 1)
        qkv = kept * qkv + (1 - kept) * ablation.qkv[layer].to(ops.device)
        results = ops.head_results(layer, ops.attend(layer, qkv))  # [H, batch, pos, d_model]
        diffs += list(results - senders_ablated[g.head_slots(layer)])
        summed = results.sum(0) + ops.b_O(layer)
        if ops.post_norm:
            attn_sums[layer] = (summed, block.ln1_post(summed))
            summed = attn_sums[layer][1]
        resid = resid + summed
        if g.arch.has_mlps:  # the MLP's input is one receiver (a parallel block's reads the block input)
            row = removed[g.mlp_row(layer), :g.n_senders_before_mlp(layer)]
            out = block.mlp(block.ln2(read(block_input if g.arch.parallel else resid, row[None])[0]))
            if ops.post_norm:
                out = block.ln2_post(out)
            diffs.append(out - senders_ablated[g.mlp_slot(layer)])
            resid = resid + out
    final = read(resid, removed[g.resid_post_row][None])[0]
    if positions is not None:
        final = gather_positions(final, positions)
    return ops.unembed(final)
