"""A circuit's own nodes: the gradient-free forward that computes only what a circuit's output reads.

``plain.py`` reads every receiver as ``sum_s m_rs * value_s + (1 - m_rs) * ablated_s`` (+ the
attention biases), that is, from the ablated side:

    input_r = ablated_resid_r + sum over senders s with m_rs != 0 of  m_rs * (value_s - ablated_s)

So a receiver's input needs the values of its kept senders only, and a sender whose every outgoing
edge is removed is never read: it need not be computed.  Walking back from the output, the nodes a
circuit needs are the senders of kept edges into the output, then the senders of kept edges into
those nodes' inputs, and so on; a head whose q/k/v edge is removed takes its ablated query, key or
value and reads nothing through that input.  A small circuit (the pruned top-n circuits of a
ranking's curve) therefore costs its own nodes' forwards, its heads' attention patterns and the
unembedding, not the whole model's.

Each needed receiver is read from the ablated side (every row its own weights; rows equal within a
layer read once), and a head input's norm is folded into its projection (``NormedProjection``):
TransformerLens' norm module makes about ten passes over each distinct input, which for a large
circuit (a distinct input per head) cost more than the projections.  ``PatchEngine.circuit_logits``
uses this path for any gradient-free single mask on pre-norm blocks.  Post-norm blocks (Gemma-2)
read a layer's heads through a norm of their sum, which is not linear in the row: they take the
full run.
Under grouped-query attention a layer's key/value inputs are read whenever any of its heads is needed.

The forward is mostly passes over [k, batch, pos, d_model] slabs, so it writes them in place: the
products of the reads and the heads' outputs go into scratch space reused between runs (a fresh
tensor of that size costs a page fault per page written, more than the product), each head's output
less its ablated value is one ``addmm`` into its slot, and where every norm centres (LayerNorm: GPT-2,
Pythia) the differences and ablated residuals are stored centred, so that each head input comes out
of its product centred and is not centred again.  Where the metric reads a few positions (IOI: one
a prompt), the last layer's outputs, its MLP and the final residual are computed at those only.
"""

from __future__ import annotations

import torch

from ..core.graph import Graph
from .layout import gather_positions, split_mask
from .model_reads import norm_parts


def needed_nodes(graph: Graph, kept: torch.Tensor, qkv_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(needed senders [n_senders] bool, read receiver rows [n_rows] bool) of a circuit with kept
    weights ``kept`` = 1 - removed [n_rows, n_senders] and q/k/v edges ``qkv_mask`` [L, 3, H]: the
    output's row is read; a read row needs every sender it keeps; a needed node's inputs are read
    (a q/k/v input only where its q/k/v edge is not removed)."""
    g, H = graph, graph.n_heads
    reads = kept != 0
    needed = torch.zeros(g.n_senders, dtype=torch.bool, device=kept.device)
    read_rows = torch.zeros(g.n_rows, dtype=torch.bool, device=kept.device)
    read_rows[g.resid_post_row] = True
    needed |= reads[g.resid_post_row]
    for layer in reversed(range(g.n_layers)):
        if g.arch.has_mlps and needed[g.mlp_slot(layer)]:
            row = g.mlp_row(layer)
            read_rows[row] = True
            needed[:g.n_senders_before_mlp(layer)] |= reads[row, :g.n_senders_before_mlp(layer)]
        heads = needed[g.head_slots(layer)]
        if not heads.any():
            continue
        inputs = heads.repeat(3, 1)  # [3, H]: the inputs of the needed heads ...
        if g.arch.grouped:  # ... and every shared key/value input of the layer
            inputs[1:, :g.n_kv_heads] = True
            inputs[1:, g.n_kv_heads:] = False
        inputs &= qkv_mask[layer] != 0
        first = layer * g.rows_per_layer
        rows = first + inputs.flatten().nonzero().flatten()
        read_rows[rows] = True
        needed[:g.n_senders_before_heads(layer)] |= reads[rows, :g.n_senders_before_heads(layer)].any(0)
    return needed, read_rows


def read_at_positions_only(graph: Graph, kept: torch.Tensor, needed: torch.Tensor,
                           read_rows: torch.Tensor) -> torch.Tensor:
    """Which needed senders [n_senders] bool are read at the metric's positions only: every read row
    that keeps one is the final residual, the MLP input of such a sender, or the query input of such
    a head (a key or value input is read at every position a query attends to).  Such a node's value
    elsewhere reaches no output: it needs computing at the metric's positions only."""
    g = graph
    limit = torch.empty(g.n_rows, dtype=torch.long)  # the senders each row can read
    limit[g.resid_post_row] = g.n_senders
    own_rows: dict[int, int] = {}  # sender -> the row of its input that such a sender's value passes on
    for layer in range(g.n_layers):
        first = layer * g.rows_per_layer
        limit[first:first + 3 * g.n_heads] = g.n_senders_before_heads(layer)
        for head in range(g.n_heads):
            own_rows[g.head_slots(layer).start + head] = g.head_input_row(layer, head, "q")
        if g.arch.has_mlps:
            limit[g.mlp_row(layer)] = g.n_senders_before_mlp(layer)
            own_rows[g.mlp_slot(layer)] = g.mlp_row(layer)
    reads = (kept != 0) & read_rows[:, None] & (torch.arange(g.n_senders)[None] < limit[:, None]).to(kept.device)
    passing = torch.zeros(g.n_rows, dtype=torch.bool, device=kept.device)  # rows read at those positions only
    passing[g.resid_post_row] = True
    only = torch.zeros(g.n_senders, dtype=torch.bool, device=kept.device)
    for slot in reversed(needed.nonzero().flatten().tolist()):  # every reader of a sender comes after it
        if bool(passing[reads[:, slot]].all()):
            only[slot] = True
            if slot in own_rows:
                passing[own_rows[slot]] = True
    return only


def nodes_only_logits(engine, mask, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of ``engine`` (a ``PatchEngine`` on pre-norm blocks) with ``mask`` (gradient-free,
    one mask), as ``PatchEngine.run`` computes them, from the circuit's needed nodes only."""
    g, ops, place, ablation = engine.graph, engine.ops, engine.place, engine.ablation
    assert not ops.post_norm, "post-norm blocks read their heads through a norm: use the full run"
    removed, qkv_mask = split_mask(g, mask, engine.device, engine.dtype)
    kept = 1 - removed
    needed, read_rows = needed_nodes(g, kept, qkv_mask)
    engine.n_forward += 1
    embeds = ops.embed(engine.tokens, engine.position_order)
    batch, n_pos, d_model = embeds[0].shape
    shape = (batch, n_pos, d_model)
    # slot 0: the base of the dense read in progress (one product adds it); then one slot per sender,
    # of which only the needed ones are written and read
    buffer = place.body_buffer(g.n_senders + 1, batch, embeds[0])
    diffs = buffer[1:]
    # Every receiver read through a LayerNorm: the norm sees only its input's centred part, which is
    # linear in the senders, so the differences and the ablated residuals are kept centred and the
    # inputs come out of the product centred (no pass over each input for its mean).
    centred = ops.norms_centre()
    for slot, value in enumerate(embeds):
        if needed[slot]:
            store_diff(diffs, slot, value, place.fetch(ablation.senders[slot]), place, centred)

    # The metric reads few positions (IOI: one per prompt): the last layer's outputs and the final
    # residual are needed there only (its queries, keys and values still read every position): they
    # are written into ``target`` [n_senders, batch, k, d_model], which holds the other senders there.
    last_at = positions is not None and positions.shape[1] < n_pos
    if last_at:
        prompt, positions = torch.arange(batch, device=engine.device)[:, None], positions.to(engine.device)
        shape_at = (batch, positions.shape[1], d_model)

        def at_positions(x: torch.Tensor) -> torch.Tensor:  # [..., batch | 1, pos, d] -> [..., batch, k, d]
            return x.expand(*x.shape[:-3], *shape)[..., prompt, positions, :]

        def senders_at_positions(name: str, n_slots: int, n_below: int) -> torch.Tensor:
            """Scratch [n_slots, batch, k, d_model]: the needed senders' differences among the first
            ``n_below`` at the metric's positions, zeros elsewhere."""
            out = place.scratch(name, (n_slots, *shape_at)).zero_()
            below = needed[:n_below].nonzero().flatten().to(diffs.device)
            out[below] = place.fetch(diffs[below[:, None, None], prompt.to(diffs.device)[None],
                                           positions.to(diffs.device)[None]])
            return out

    zeroed = [0]  # the unneeded slots below this one hold zeros (a dense read multiplies them)
    at_only = read_at_positions_only(g, kept, needed, read_rows) if last_at else None

    def read(rows: torch.Tensor, n_senders: int, first_row: int,
             src: torch.Tensor = diffs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The distinct inputs [k, batch, pos, d_model] of receivers with kept weights ``rows``
        [n, n_senders] (of one layer's heads, or one MLP or the output: ``first_row``), and which
        one each row reads [n] (None: row i reads input i); from the last layer's ``target``
        (``src``): at the metric's positions only."""
        distinct, source = torch.unique(rows, dim=0, return_inverse=True)
        if len(distinct) == len(rows):  # no two alike: read them in their own order
            distinct, source = rows, None
        base = engine.reads.ablated_resid(n_senders, first_row, centred)  # [1, batch | 1, pos, d_model]
        if src is not diffs:
            base = at_positions(base)
        x = place.scratch("inputs", (len(distinct), *src.shape[1:]))  # the product written in place
        used = distinct.any(0).nonzero().flatten()
        if len(used) == 0:
            return x.copy_(base.expand_as(x)), source
        if len(used) <= n_senders // 4:  # a few slabs: gather them
            if src.device == x.device:
                slabs = torch.index_select(src, 0, used.to(src.device),
                                           out=place.scratch("gathered", (len(used), *src.shape[1:])))
            else:
                slabs = place.fetch(src.index_select(0, used.to(src.device)))
            torch.mm(distinct[:, used], slabs.flatten(1), out=x.flatten(1))
        else:  # most of them: one product over the stored range, its unneeded slots zeroed once
            if src is diffs and zeroed[0] < n_senders:
                unneeded = (~needed[zeroed[0]:n_senders]).nonzero().flatten() + zeroed[0]
                diffs.index_fill_(0, unneeded.to(diffs.device), 0)
                zeroed[0] = n_senders
            if src is diffs and buffer.device == x.device:  # the base in slot 0, weight 1: no pass to add it
                buffer[0].copy_(base[0])
                weights = torch.cat([distinct.new_ones(len(distinct), 1), distinct], 1)
                torch.mm(weights, buffer[:n_senders + 1].flatten(1), out=x.flatten(1))
                return x, source
            torch.mm(distinct, place.fetch(src[:n_senders]).flatten(1), out=x.flatten(1))
        return x.add_(base), source

    target = diffs  # where the senders' differences are written: ``at`` for the last layer's
    for layer in range(g.n_layers):
        block = ops.blocks[layer]
        if last_at and layer == g.n_layers - 1:
            target = senders_at_positions("at positions", g.n_senders, g.n_senders_before_heads(layer))
        heads = needed[g.head_slots(layer)].nonzero().flatten()
        if len(heads):
            z = attention(engine, layer, heads, kept, qkv_mask[layer], read, shape, centred)
            ablated = place.fetch(ablation.senders[g.head_slots(layer)])
            if target is not diffs:
                z, ablated = z[prompt, positions], at_positions(ablated)
            store_heads(engine, layer, z, heads, ablated, target, centred)
        if g.arch.has_mlps and at_only is not None and target is diffs and at_only[g.mlp_slot(layer)]:
            # read at the metric's positions only: computed there, zero elsewhere (where only readers
            # whose values there reach no output read it)
            n, slot = g.n_senders_before_mlp(layer), g.mlp_slot(layer)
            src = senders_at_positions("mlp at positions", n, n)
            x, _ = read(kept[g.mlp_row(layer), :n][None], n, g.mlp_row(layer), src)
            diff = block.mlp(block.ln2(x[0])).sub_(at_positions(place.fetch(ablation.senders[slot])))
            if centred:
                centre_(diff)
            if diffs.device == diff.device:
                diffs[slot].zero_()[prompt, positions] = diff
            else:
                whole = torch.zeros(shape, dtype=diff.dtype, device=diff.device)
                whole[prompt, positions] = diff
                diffs[slot] = place.store(whole)
        elif g.arch.has_mlps and needed[g.mlp_slot(layer)]:
            n, slot = g.n_senders_before_mlp(layer), g.mlp_slot(layer)
            x, _ = read(kept[g.mlp_row(layer), :n][None], n, g.mlp_row(layer), target)
            ablated = place.fetch(ablation.senders[slot])
            store_diff(target, slot, block.mlp(block.ln2(x[0])), ablated if target is diffs else at_positions(ablated),
                       place, centred)
    final, _ = read(kept[g.resid_post_row][None], g.n_senders, g.resid_post_row, target)
    final = final[0].expand(target.shape[1:])
    if positions is not None and not last_at:
        final = gather_positions(final, positions)
    return ops.unembed(final)


def centre_(x: torch.Tensor) -> torch.Tensor:
    """``x`` less its mean over the last dimension, in place."""
    return x.sub_(x.mean(-1, keepdim=True))


def store_diff(diffs: torch.Tensor, slot: int, value: torch.Tensor, ablated: torch.Tensor, place,
               centred: bool) -> None:
    """``diffs[slot] = value - ablated`` (``centred``: less its mean), written in place where
    ``diffs`` lives on the model's device."""
    own = diffs.device == value.device
    diff = torch.sub(value, ablated, out=diffs[slot] if own else None)
    if centred:
        centre_(diff)
    if not own:
        diffs[slot] = place.store(diff)


def attention(engine, layer: int, heads: torch.Tensor, kept: torch.Tensor, qkv_mask: torch.Tensor,
              read, shape: tuple[int, int, int], centred: bool) -> torch.Tensor:
    """Layer ``layer``'s z [batch, pos, H, d_head], its needed ``heads``' q/k/v inputs read (where
    the q/k/v edge is not removed), every other head's query, key and value the ablated ones."""
    g, ops, place, ablation = engine.graph, engine.ops, engine.place, engine.ablation
    H, first = g.n_heads, layer * g.rows_per_layer
    W, b = ops.qkv_weights(layer)  # [3, H, d_model, d_head], [3, (pos,) H, d_head]
    bias = b[:, None] if b.dim() == 4 else b[:, None, None]  # [3, 1, (pos | 1), H, d_head]
    ablated_qkv = place.fetch(ablation.qkv[layer])  # [3, batch | 1, pos, H, d_head]
    # held head-major, [3, H, batch, pos, d_head], so that a head's q, k or v is one contiguous block
    by_head = place.scratch("qkv", (3, H, *shape[:2], ablated_qkv.shape[-1]))
    by_head.copy_(ablated_qkv.permute(0, 3, 1, 2, 4))
    inputs = torch.zeros(3, H, dtype=torch.bool, device=kept.device)
    inputs[:, heads] = True
    if g.arch.grouped:
        inputs[1:, :g.n_kv_heads] = True
        inputs[1:, g.n_kv_heads:] = False
    inputs &= qkv_mask != 0
    offsets = inputs.flatten().nonzero().flatten()
    if len(offsets):
        n = g.n_senders_before_heads(layer)
        x, source = read(kept[first + offsets, :n], n, first)
        project = NormedProjection(ops.blocks[layer].ln1, x, W, centred)
        flat = by_head.view(3 * H, *by_head.shape[2:])
        groups = [torch.tensor([i]) for i in range(len(offsets))] if source is None else \
            [(source == j).nonzero().flatten() for j in range(len(x))]
        for j, members in enumerate(groups):  # the inputs read by one distinct input, projected at once
            which, head = offsets[members] // H, offsets[members] % H
            own = project(j, which, head).view(*shape[:2], len(members), -1).permute(2, 0, 1, 3)
            own = own + bias[which, :, :, head]
            m = qkv_mask[which, head]
            if bool((m != 1).any()):
                w = m.view(-1, 1, 1, 1)
                own = w * own + (1 - w) * ablated_qkv[which, :, :, head]
            flat.index_copy_(0, offsets[members], own)
    qkv = by_head.permute(0, 2, 3, 1, 4)  # [3, batch, pos, H, d_head]
    return ops.attend(layer, qkv)


def store_heads(engine, layer: int, z: torch.Tensor, heads: torch.Tensor, ablated: torch.Tensor,
                diffs: torch.Tensor, centred: bool) -> None:
    """Layer ``layer``'s ``heads``' outputs from their z [batch, pos, H, d_head], less their
    ``ablated`` values [H, batch | 1, pos, d_model] (``centred``: less their means), into ``diffs``."""
    ops, place, span = engine.ops, engine.place, engine.graph.head_slots(layer)
    if diffs.device == z.device:  # each head's output written straight into its slot
        ops.head_result_diffs(layer, z, heads, ablated, diffs[span])
        if centred:
            for head in heads.tolist():
                centre_(diffs[span.start + head])
    else:  # stored off the device: computed there, then stored
        result = ops.head_results(layer, z, heads) - ablated[heads]
        diffs[(span.start + heads).to(diffs.device)] = place.store(centre_(result) if centred else result)


class NormedProjection:
    """``ln(x[j]) @ W[which, head]`` for distinct head inputs ``x`` [k, batch, pos, d_model] and the
    q/k/v weights W [3, H, d_model, d_head]: [batch * pos, len(which) * d_head].  ``x`` is centred
    in place (``centred``: it already is).

    For TransformerLens' four norms (``model_reads.norm_parts``: ``w * xc / s + b``) the norm's
    weight and bias are folded into the projection, ``(xc @ (w W)) / s + b @ W``, as the gradient
    path does: two passes over an input (its mean and its centred norm) where the norm module makes
    about ten; the projection reads the centred input once.  Any other norm: the module itself."""

    def __init__(self, ln, x: torch.Tensor, W: torch.Tensor, centred: bool = False):
        parts = norm_parts(ln)
        if parts is None or parts.identity:
            self.normed, self.W, self.scale, self.shift = (x if parts is not None else ln(x)), W, None, None
            return
        self.normed = centre_(x) if parts.centred and not centred else x  # xc, in place (x is scratch)
        self.scale = torch.linalg.vector_norm(self.normed, dim=-1, keepdim=True).square_() \
            .div_(x.shape[-1]).add_(parts.eps).sqrt_()  # s = sqrt(mean(xc^2) + eps), [k, batch, pos, 1]
        self.W = W * parts.w[:, None] if parts.w is not None else W
        self.shift = torch.einsum("d,whde->whe", parts.b, W) if parts.b is not None else None  # [3, H, d_head]

    def __call__(self, j: int, which: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        weight = self.W[which, head].permute(1, 0, 2).flatten(1)  # [d_model, r * d_head]
        out = self.normed[j].flatten(0, -2) @ weight
        if self.scale is not None:
            out = out / self.scale[j].flatten(0, -2)
        if self.shift is not None:
            out = out + self.shift[which, head].flatten()
        return out
