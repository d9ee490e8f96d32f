"""``PatchEngine``: the patched forward of ``plain.py``, computed fast.

The maths is ``plain_forward``'s; what differs is how much of it is computed, each speed-up in
its own module and held to ``plain_forward`` by the tests:

- ``senders.py``   each sender's difference from its ablated value is stored once per run, and a
                   layer's receivers are read with one matmul of their rows against that stack;
- ``reads.py``     only receivers that lose an edge are read, each distinct mask row once, mostly
                   removed rows from the ablated side; a head whose q/k/v edge is removed skips
                   its input; an output that reads no sender needs no forward;
- ``batching.py``  a run restarts at a stage from a recorded run's cache, and ACDC's candidate
                   circuits that differ only at that stage run as one batch;
- ``placement.py`` stored activations on the model's device or in host memory;
- ``gradients.py`` mask gradients where a layer's heads share one input, or a receiver is alone;
- ``postnorm.py``  Gemma-2's post-norm blocks, as a reader that replaces the linear one;
- ``nodes_only.py`` (``circuit_logits``) a circuit's needed nodes only, read from the ablated side.

What the engine reads of the model is read in ``model_reads.py``; the ablation is built in
``ablation.py``.
"""

from __future__ import annotations

import torch

from ..core.architecture import check_supported
from ..core.graph import Architecture, EdgeMask, Graph
from .batching import check_candidates, restarted_diffs
from .gradients import heads_reading_one_input, one_receiver_input, reads_one_input
from .layout import gather_positions, per_candidate, put_heads, split_mask, with_prompts
from .model_reads import ModelView, ModelReads
from .nodes_only import nodes_only_logits
from .placement import Storage
from .postnorm import PostNormReads
from .reads import ReceiverReads
from .senders import Ablation, SenderCache, SenderDiffs


class PatchEngine:
    """Runs ``model`` on ``tokens`` with a mask over ``graph``'s edges, ablating from ``ablation``."""

    def __init__(self, model: ModelView, graph: Graph, tokens: torch.Tensor, ablation: Ablation,
                 position_order: torch.Tensor | None = None, activation_device: str = "model"):
        """``position_order``: position i reads the positional embedding of position
        ``position_order[i]`` (the corrupted run of ``shuffle_positions``).  ``activation_device``:
        where the big stored tensors live, ``model`` (its device) or ``cpu`` (see
        ``choose_activation_device``; ``ablation`` should live there too)."""
        check_supported(model.cfg)
        cfg = model.cfg
        if graph.arch != Architecture.from_config(cfg, split_embed=graph.arch.split_embed):
            raise ValueError(f"graph ({graph.describe()}) does not match model {cfg.model_name}")
        self.model, self.graph, self.tokens, self.ablation = model, graph, tokens, ablation
        self.ops = ModelReads(model, graph, tokens)
        self.device, self.dtype = self.ops.device, self.ops.dtype
        self.place = Storage(self.device, self.dtype, activation_device)
        self.activation_device, self.offload, self.storage = activation_device, self.place.offload, self.place.storage
        self.n_forward = 0  # model forwards run (a restarted run counts as one)
        if (self.ops.shortformer or self.ops.rotary) and graph.arch.split_embed:
            raise ValueError(f"a {cfg.positional_embedding_type} model's positional embedding is not in the residual "
                             "stream: it cannot be a sender")
        if position_order is not None and not graph.arch.split_embed:
            raise ValueError("shuffle_positions needs the positional embedding as its own sender (split embeddings)")
        self.position_order = position_order
        self.reads = (PostNormReads if self.ops.post_norm else ReceiverReads)(self.ops, graph, ablation, self.place)
        # A differentiable run reads a layer's heads through one input where their mask rows agree
        # (gradients.py); False forces the generic read.
        self.shared_head_reads = True
        self.n_one_input_reads = 0  # layers read so (a test checks the fast path is taken)

    # ---- one layer -------------------------------------------------------------------------
    def receiver_input(self, r: torch.Tensor, row: int, resid: torch.Tensor, diff: SenderDiffs) -> torch.Tensor:
        """The input of one receiver, given its removed-mask row for each of ``len(r)`` candidates
        [candidates, n_senders]: [candidates * batch, pos, d_model] (candidate-major)."""
        if len(r) == 1 and self.shared_head_reads and self.reads.linear and torch.is_grad_enabled() and r.requires_grad:
            return one_receiver_input(self.reads, r, row, resid, diff)
        changed, x, source = self.reads.changed_inputs(r, row, resid, diff)
        if len(r) == 1:
            return resid if x is None else x[0]
        inputs = resid.unsqueeze(0).repeat(len(r), *([1] * resid.dim()))
        if x is not None:
            inputs[changed] = x[source]
        return inputs.flatten(0, 1)

    def attention(self, layer: int, resid: torch.Tensor, diff: SenderDiffs, r: torch.Tensor,
                  qkv_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s heads.  ``r`` [c, 3H, n_senders] and ``qkv_mask`` [c, 3, H] are the
        layer's removed-mask rows and q/k/v edges for c = 1 (shared by every candidate) or one
        copy per candidate (the stage a batched run tests; ``resid`` then holds the prompts once)."""
        g, ln1, H = self.graph, self.ops.blocks[layer].ln1, self.graph.n_heads
        c, k = r.shape[0], diff.n_candidates
        W, b = self.ops.qkv_weights(layer)  # [3, H, d_model, d_head], [3, (pos,) H, d_head]
        bias = b[:, None] if b.dim() == 4 else b[:, None, None]  # [3, 1, (pos | 1), H, d_head]
        if self.shared_head_reads and reads_one_input(self.reads, r, ln1, W, b, g.n_kv_heads):
            self.n_one_input_reads += 1
            qkv = heads_reading_one_input(self.reads, layer * g.rows_per_layer, resid, diff, r[0], ln1, W, bias)
        else:
            qkv = self.heads_reading_own_inputs(layer, resid, diff, r, qkv_mask, W, bias)
        if (qkv_mask != 1).any() or (torch.is_grad_enabled() and qkv_mask.requires_grad):
            w = qkv_mask.transpose(0, 1).reshape(3, c, 1, 1, H, 1)
            mixed = w * per_candidate(qkv, k, 1) + (1 - w) * self.place.fetch(self.ablation.qkv[layer]).unsqueeze(1)
            qkv = mixed.flatten(1, 2)
        result = self.ops.head_results(layer, self.ops.attend(layer, qkv))  # one [batch, pos, d] slab per head
        heads = g.head_slots(layer)
        diff.write(heads.start, with_prompts(torch.sub, result, self.place.fetch(self.ablation.senders[heads]), k, 1))
        return self.reads.attention_output(layer, result, resid, diff, k), qkv

    def heads_reading_own_inputs(self, layer: int, resid: torch.Tensor, diff: SenderDiffs, r: torch.Tensor,
                                 qkv_mask: torch.Tensor, W: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The generic read: q/k/v [3, c*batch, pos, H, d_head], each distinct changed head input built,
        normalised and projected on its own (any mask; autograd differentiates it as it is)."""
        g, ln1, H, c = self.graph, self.ops.blocks[layer].ln1, self.graph.n_heads, r.shape[0]
        rows = r.flatten(0, 1)
        if not (torch.is_grad_enabled() and (r.requires_grad or qkv_mask.requires_grad)):
            # a head input whose q/k/v edge is removed is replaced by its ablated value: its own
            # input is never read (0 * its projection), so it need not be computed
            rows = torch.where(qkv_mask.flatten()[:, None] == 0, 0, rows)
        changed, x, source = self.reads.changed_inputs(rows, layer * g.rows_per_layer, resid, diff)
        if len(changed) < len(rows):
            qkv = torch.einsum("bpd,whde->wbphe", ln1(resid), W) + bias
            if c > 1:
                qkv = qkv.repeat(1, c, 1, 1, 1)  # one copy per candidate
        else:  # every head input changed: nothing reads the unpatched projection
            qkv = resid.new_zeros(3, c * resid.shape[0], resid.shape[1], H, W.shape[-1])
        if x is not None:
            which, head = changed % (3 * H) // H, changed % H
            own = torch.einsum("nbpd,nde->nbpe", ln1(x)[source], W[which, head]) + bias[which, :, :, head]
            qkv = put_heads(qkv, changed, own, c)
        return qkv

    def mlp(self, layer: int, resid: torch.Tensor, diff: SenderDiffs, r: torch.Tensor,
            block_input: torch.Tensor) -> torch.Tensor:
        """Layer ``layer``'s MLP; ``r`` [c, n_senders]: its removed-mask row, shared (c = 1) or per
        candidate.  It reads ``resid`` (after the attention), or ``block_input`` in a parallel block."""
        g, block = self.graph, self.ops.blocks[layer]
        reads = block_input if g.arch.parallel else resid
        out = self.reads.mlp_output(layer, block.mlp(block.ln2(self.receiver_input(r, g.mlp_row(layer), reads, diff))))
        if out.shape[0] < resid.shape[0]:  # a parallel MLP read the prompts once; the heads, per candidate
            out = out.repeat(resid.shape[0] // out.shape[0], *([1] * (out.dim() - 1)))
        slot, k = g.mlp_slot(layer), diff.n_candidates
        diff.write(slot, with_prompts(torch.sub, out.unsqueeze(0), self.place.fetch(self.ablation.senders[slot:slot + 1]), k, 1))
        return with_prompts(torch.add, out, resid, k, 0)

    # ---- the patched forward -----------------------------------------------------------------
    def run(self, mask: EdgeMask | torch.Tensor, positions: torch.Tensor | None = None, *,
            start_stage: int = 0, cache: SenderCache | None = None,
            record: bool = False, want_logits: bool = True) -> tuple[torch.Tensor | None, SenderCache | None]:
        """Logits [batch, pos, vocab] (or [batch, k, vocab] at ``positions`` [batch, k]; None
        when not ``want_logits``: a run recorded for its senders only skips the unembedding).

        With a ``cache`` the run restarts from it at ``start_stage``: valid when the mask differs
        from the cached run only in edges read at or after that stage.  A restarted run may take
        several masks at once, [candidates, n_edges], that differ from each other only in edges
        read at ``start_stage`` (the circuits of ACDC's next tests at that stage): it returns
        [candidates, batch, ...] logits from one batched forward.  ``record`` returns this run's
        cache).

        A gradient-free full run whose final residual has every edge removed reads only the
        ablated senders: its logits are computed from those directly, without a forward."""
        g = self.graph
        removed, qkv_mask = split_mask(g, mask, self.device, self.dtype)
        batched = removed.dim() == 3
        removed, qkv_mask = (removed, qkv_mask) if batched else (removed[None], qkv_mask[None])
        n_candidates = removed.shape[0]
        differentiable = torch.is_grad_enabled() and removed.requires_grad
        if cache is None and not (batched or record or differentiable or not self.reads.linear) \
                and bool((removed[0, g.resid_post_row] == 1).all()):
            return (self.output_of_ablated(positions) if want_logits else None), None
        self.n_forward += 1
        if cache is None:
            assert start_stage == 0 and not batched, "restarting a run or batching masks needs the cache of a full run"
            embeds = self.ops.embed(self.tokens, self.position_order)
            n_embed = len(embeds)
            batch, pos, d_model = embeds[0].shape
            # a recorded run's senders are kept (its cache); any other run's are scratch, reused
            buffer = None if differentiable else torch.empty(
                g.n_senders, batch, pos, d_model, device=self.storage, dtype=self.dtype) if record \
                else self.place.body_buffer(g.n_senders, batch, embeds[0])
            diff = SenderDiffs(buffer, differentiable, fetch=self.offload)
            diff.write(0, torch.stack(embeds) - self.place.fetch(self.ablation.senders[:n_embed]))
            resid = sum(embeds[1:], embeds[0])
        else:
            assert not differentiable, "restarting from a cache is for gradient-free search"
            assert not record, "a restarted run is not recorded"
            if batched:
                check_candidates(g, removed, qkv_mask, start_stage)
            resid, diff = restarted_diffs(g, self.place, cache, start_stage, n_candidates)
        stages: list[torch.Tensor] = []
        qkv: list[torch.Tensor] = []

        def rows(stage: int, first: int, n_rows: int, n_senders: int) -> torch.Tensor:
            """The removed-mask rows read at ``stage``: one copy per candidate at the stage under
            test, else the shared ones (the candidates agree there)."""
            which = removed if stage == start_stage else removed[:1]
            return which[:, first:first + n_rows, :n_senders]

        for layer in range(start_stage // 2, g.n_layers):
            stage = 2 * layer
            # a parallel block's MLP reads the block's input (a run restarted at the MLP: the cache's)
            block_input = resid if stage >= start_stage else self.place.fetch(cache.resid[stage])
            if stage >= start_stage:
                if record:
                    stages.append(self.place.store(resid))
                r = rows(stage, layer * g.rows_per_layer, 3 * g.n_heads, g.n_senders_before_heads(layer))
                layer_qkv_mask = (qkv_mask if stage == start_stage else qkv_mask[:1])[:, layer]
                resid, layer_qkv = self.attention(layer, resid, diff, r, layer_qkv_mask)
                if record:
                    qkv.append(self.place.store(layer_qkv))
            if record:
                stages.append(self.place.store(resid))  # before the MLP (attention-only models: a stage that does nothing)
            if g.arch.has_mlps:
                r = rows(stage + 1, g.mlp_row(layer), 1, g.n_senders_before_mlp(layer))[:, 0]
                resid = self.mlp(layer, resid, diff, r, block_input)
        if record:
            stages.append(self.place.store(resid))

        final = self.receiver_input(rows(2 * g.n_layers, g.resid_post_row, 1, g.n_senders)[:, 0],
                                    g.resid_post_row, resid, diff)
        if not want_logits:
            return None, (SenderCache(diff=diff.buffer, resid=stages, qkv=qkv) if record else None)
        if positions is not None:
            final = gather_positions(final, positions.repeat(n_candidates, 1) if batched else positions)
        logits = self.ops.unembed(final)
        if batched:
            logits = per_candidate(logits, n_candidates, 0)
        attn_sums = {l: (self.place.store(S), self.place.store(A)) for l, (S, A) in diff.attn_sums.items()}
        cached = SenderCache(diff=diff.buffer, resid=stages, qkv=qkv, attn_sums=attn_sums) if record else None
        return logits, cached

    def output_of_ablated(self, positions: torch.Tensor | None) -> torch.Tensor:
        """The logits of a run in which the final residual reads no sender's own value (every
        edge into it removed): the unembedded ablated residual, which is what the full forward
        computes for that receiver (``ablated_resid`` plus a sum over no senders)."""
        final = self.reads.ablated_resid(self.graph.n_senders, self.graph.resid_post_row)[0]
        final = final.expand(self.tokens.shape[0], self.tokens.shape[1], -1)
        return self.ops.unembed(final if positions is None else gather_positions(final, positions))

    def logits(self, mask: EdgeMask | torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        return self.run(mask, positions)[0]

    def circuit_logits(self, mask: EdgeMask | torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """``logits``, computed from the circuit's needed nodes only (``nodes_only.py``), each head
        input's norm folded into its projection: the cheaper run for a curve's circuits, small or
        large (every receiver read from the ablated side).  A mask that needs gradients, or a
        post-norm model, takes the full run."""
        values = mask.values if isinstance(mask, EdgeMask) else mask
        if self.ops.post_norm or values.dim() != 1 or (torch.is_grad_enabled() and values.requires_grad):
            return self.logits(mask, positions)
        return nodes_only_logits(self, mask, positions)
