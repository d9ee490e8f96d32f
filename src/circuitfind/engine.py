"""The patched forward pass: one run of a HookedTransformer in which every edge can be removed.

Every receiver (a head's q/k/v input, an MLP's input, the final residual) reads

    input_r = sum over senders s of   m_rs * value_s + (1 - m_rs) * ablated_s      (+ biases)
            = resid - sum_s (1 - m_rs) * (value_s - ablated_s)

where ``resid`` is this run's residual stream (every sender's current value, plus the attention
output biases, which belong to no sender and are never patched), ``m_rs`` the edge's mask value
(1 keep, 0 remove, fractions for SP's gates) and ``ablated_s`` the sender's value on the corrupted
prompts (interchange) or zero.  Only the differences ``value_s - ablated_s`` are stored, one
``[batch, pos, d_model]`` slab per sender, and each layer's receivers are read with one matmul of
the removed-mask rows against that stack.  This never materialises TransformerLens'
``use_split_qkv_input`` tensors for receivers that nothing was removed from, and it lets ACDC restart
a run at the layer it is testing (see ``SenderCache``).

Removing a head's q/k/v edge gives the head its ablated query/key/value (the corrupted run's
``hook_q``; zero under zero ablation), as in ACDC.

The maths is re-implemented here from the model's weights, so ``check_supported`` refuses
architectures it does not cover; ``reference.py`` computes the same thing with TransformerLens hooks
and the tests hold the two together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from .graph import EdgeMask, Graph


class UnsupportedModelError(ValueError):
    """The model uses a feature the patching engine does not implement."""


def check_supported(model: HookedTransformer) -> None:
    cfg = model.cfg
    problems = []
    if cfg.positional_embedding_type != "standard":
        problems.append(f"positional_embedding_type={cfg.positional_embedding_type!r} (only 'standard')")
    for flag in ("parallel_attn_mlp", "use_normalization_before_and_after", "use_qk_norm", "use_attention_sinks"):
        if getattr(cfg, flag, False):
            problems.append(f"{flag}=True")
    if getattr(cfg, "n_key_value_heads", None) not in (None, cfg.n_heads):
        problems.append("grouped-query attention")
    if getattr(cfg, "attn_scores_soft_cap", -1.0) not in (None, -1.0):
        problems.append("attention soft-capping")
    if getattr(cfg, "clip_qkv", None) is not None:
        problems.append("clip_qkv")
    if cfg.attention_dir not in ("causal", "bidirectional"):
        problems.append(f"attention_dir={cfg.attention_dir!r}")
    if problems:
        raise UnsupportedModelError(
            f"circuitfind's patching engine does not support {cfg.model_name}: {', '.join(problems)}"
        )


@dataclass
class Ablation:
    """What a removed edge carries instead of the sender's value.

    ``senders``: [n_senders, batch|1, pos, d_model]; ``qkv``: [n_layers, 3, batch|1, pos, n_heads, d_head]
    (a size-1 batch broadcasts: zero and mean ablation)."""

    kind: str
    senders: torch.Tensor
    qkv: torch.Tensor


class SenderDiffs:
    """Each sender's ``value - ablated`` [batch, pos, d_model] in this run, and sums of them weighted
    by mask rows.  Without gradients they live in one buffer written in place (one matmul per read);
    when gradients flow through the mask (SP, attribution) in-place writes would break autograd, so
    each layer's block is kept as its own tensor and reads sum one matmul per block."""

    def __init__(self, buffer: torch.Tensor, differentiable: bool):
        self.differentiable = differentiable
        self.buffer = None if differentiable else buffer
        self.blocks: list[tuple[int, torch.Tensor]] = []  # (first slot, [n, batch, pos, d])

    def write(self, start: int, values: torch.Tensor) -> None:
        if self.differentiable:
            self.blocks.append((start, values))
        else:
            self.buffer[start:start + values.shape[0]] = values

    def weighted(self, weights: torch.Tensor, n_senders: int) -> torch.Tensor:
        """sum_s weights[r, s] * diff_s over the first ``n_senders`` senders -> [rows, batch*pos*d]."""
        if not self.differentiable:
            # ACDC's masks are sparse on one side: gather the few senders with a nonzero weight
            # rather than multiply zeros (a slab is batch*pos*d_model numbers).
            used = weights.any(0).nonzero().flatten()
            if len(used) <= n_senders // 4:
                return weights[:, used] @ self.buffer.index_select(0, used).flatten(1)
            return weights @ self.buffer[:n_senders].flatten(1)
        total = None
        for start, block in self.blocks:
            if start >= n_senders:
                continue
            part = weights[:, start:start + block.shape[0]] @ block.flatten(1)
            total = part if total is None else total + part
        return total


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


class PatchEngine:
    """Runs ``model`` on ``tokens`` with a mask over ``graph``'s edges, ablating from ``ablation``."""

    def __init__(self, model: HookedTransformer, graph: Graph, tokens: torch.Tensor, ablation: Ablation):
        check_supported(model)
        cfg = model.cfg
        if graph.n_layers != cfg.n_layers or graph.n_heads != cfg.n_heads or graph.arch.has_mlps == cfg.attn_only:
            raise ValueError(f"graph ({graph.describe()}) does not match model {cfg.model_name}")
        self.model, self.graph, self.tokens, self.ablation = model, graph, tokens, ablation
        self.device = next(model.parameters()).device
        self.dtype = cfg.dtype
        self.n_forward = 0  # model forwards run (a restarted run counts as one)
        self._ablated_resid: dict[tuple[int, int], torch.Tensor] = {}
        self._qkv_weights: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._scratch: torch.Tensor | None = None  # see scratch_from
        self._scratch_source: SenderCache | None = None
        self._scratch_dirty_from = 0

    # ---- building blocks -------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """The embedding senders' values: [token, positional] when split, else their sum."""
        tok, pos = self.model.embed(tokens), self.model.pos_embed(tokens)
        return [tok, pos] if self.graph.arch.split_embed else [tok + pos]

    def changed_inputs(self, rows: slice, n_senders: int, resid: torch.Tensor, diff: SenderDiffs,
                       removed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The receivers in ``rows`` whose input is not simply ``resid`` (something was removed),
        as (offsets into ``rows``, their inputs [n_changed, batch, pos, d_model]).

        A receiver that keeps most of its edges is read as ``resid - removed @ diff``; one that
        removes most as ``ablated_resid + kept @ diff``.  The two are equal, but each sums over the
        fewer senders, and the second is exact when everything is removed (no cancellation of a
        sender's value against itself, which layer norm would amplify under zero ablation)."""
        r = removed[rows, :n_senders]
        changed = r.any(1).nonzero().flatten()
        if len(changed) == 0:
            return changed, None
        r = r[changed]
        mostly_removed = r.sum(1) > n_senders / 2
        shape = (len(changed), *resid.shape)
        if not mostly_removed.any():
            return changed, resid - diff.weighted(r, n_senders).view(shape)
        if mostly_removed.all():
            ablated = self.ablated_resid(n_senders, rows.start)
            return changed, ablated + diff.weighted(1 - r, n_senders).view(shape)
        keeping = resid - diff.weighted(torch.where(mostly_removed[:, None], 0, r), n_senders).view(shape)
        ablated = self.ablated_resid(n_senders, rows.start) + diff.weighted(
            torch.where(mostly_removed[:, None], 1 - r, 0), n_senders).view(shape)
        return changed, torch.where(mostly_removed.view(-1, 1, 1, 1), ablated, keeping)

    def receiver_input(self, row: int, n_senders: int, resid, diff, removed) -> torch.Tensor:
        """The input of one receiver row [batch, pos, d_model]."""
        changed, x = self.changed_inputs(slice(row, row + 1), n_senders, resid, diff, removed)
        return resid if x is None else x[0]

    def ablated_resid(self, n_senders: int, row: int) -> torch.Tensor:
        """The residual a receiver would read with every edge removed: the ablated values of the
        senders it sees plus the attention biases written before it (never patched)."""
        key = (n_senders, row)
        if key not in self._ablated_resid:
            g, blocks = self.graph, self.model.blocks
            layer = g.n_layers if row == g.resid_post_row else row // g.rows_per_layer
            own_layer_bias = g.arch.has_mlps and row == g.mlp_row(min(layer, g.n_layers - 1))
            biases = sum((blocks[l].attn.b_O for l in range(layer + (1 if own_layer_bias else 0))),
                         torch.zeros((), dtype=self.dtype, device=self.device))
            self._ablated_resid[key] = (self.ablation.senders[:n_senders].sum(0) + biases).unsqueeze(0)
        return self._ablated_resid[key]

    def attention(self, layer: int, resid, diff, removed, qkv_mask) -> tuple[torch.Tensor, torch.Tensor]:
        g, block = self.graph, self.model.blocks[layer]
        attn, H = block.attn, g.n_heads
        pos = resid.shape[1]
        W, b = self.qkv_weights(layer)  # [3, H, d_model, d_head], [3, H, d_head]
        # Every head reads the unpatched residual unless an edge into it was removed: project that
        # once for all heads (as the model does), then redo only the heads whose input changed.
        qkv = torch.einsum("bpd,whde->wbphe", block.ln1(resid), W) + b[:, None, None]
        start = layer * g.rows_per_layer
        changed, x = self.changed_inputs(slice(start, start + 3 * H), g.n_senders_before_heads(layer),
                                         resid, diff, removed)
        if x is not None:
            which, head = changed // H, changed % H
            own = torch.einsum("nbpd,nde->nbpe", block.ln1(x), W[which, head]) + b[which, head][:, None, None]
            qkv = _put_heads(qkv, which, head, own)
        m = qkv_mask[layer]  # [3, H]: the q/k/v edges of each head
        if (m != 1).any():
            w = m.view(3, 1, 1, H, 1)
            qkv = w * qkv + (1 - w) * self.ablation.qkv[layer]
        q, k, v = qkv
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / attn.attn_scale
        if self.model.cfg.attention_dir == "causal":
            causal = torch.ones(pos, pos, dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
        pattern = F.softmax(scores, dim=-1)
        pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)
        z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
        result = torch.einsum("bqhe,hed->hbqd", z, attn.W_O)  # one [batch, pos, d] slab per head
        heads = g.head_slots(layer)
        diff.write(heads.start, result - self.ablation.senders[heads])
        return resid + result.sum(0) + attn.b_O, qkv

    def qkv_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer not in self._qkv_weights:
            attn = self.model.blocks[layer].attn
            self._qkv_weights[layer] = (torch.stack((attn.W_Q, attn.W_K, attn.W_V)),
                                        torch.stack((attn.b_Q, attn.b_K, attn.b_V)))
        return self._qkv_weights[layer]

    def mlp(self, layer: int, resid, diff, removed) -> torch.Tensor:
        g, block = self.graph, self.model.blocks[layer]
        row = g.mlp_row(layer)
        out = block.mlp(block.ln2(self.receiver_input(row, g.n_senders_before_mlp(layer), resid, diff, removed)))
        slot = g.mlp_slot(layer)
        diff.write(slot, (out - self.ablation.senders[slot]).unsqueeze(0))
        return resid + out

    def scratch_from(self, cache: SenderCache, n_unchanged: int) -> torch.Tensor:
        """A buffer whose first ``n_unchanged`` slabs equal the cache's, for a restarted run to write
        the rest into.  Copying the whole cache per edge test would cost as much as a layer, so one
        scratch buffer is kept and only the slabs an earlier restart overwrote are refreshed."""
        if self._scratch is None or self._scratch_source is not cache:
            self._scratch, self._scratch_source = cache.diff.clone(), cache
        elif self._scratch_dirty_from < n_unchanged:
            start = self._scratch_dirty_from
            self._scratch[start:n_unchanged] = cache.diff[start:n_unchanged]
        self._scratch_dirty_from = n_unchanged
        return self._scratch

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        ln_final = getattr(self.model, "ln_final", None)
        return self.model.unembed(ln_final(x) if ln_final is not None else x)

    # ---- the patched forward -----------------------------------------------------------------
    def split_mask(self, mask: EdgeMask | torch.Tensor):
        g = self.graph
        values = mask.values if isinstance(mask, EdgeMask) else mask
        slots = g.slot_values(values.to(device=self.device, dtype=self.dtype))
        n_resid = g.n_receivers * g.n_senders
        removed = 1 - slots[:n_resid].view(g.n_receivers, g.n_senders)
        qkv_mask = slots[n_resid:].view(g.n_layers, 3, g.n_heads)
        return removed, qkv_mask

    def run(self, mask: EdgeMask | torch.Tensor, positions: torch.Tensor | None = None, *,
            start_stage: int = 0, cache: SenderCache | None = None,
            record: bool = False) -> tuple[torch.Tensor, SenderCache | None]:
        """Logits [batch, pos, vocab] (or [batch, k, vocab] at ``positions`` [batch, k]).

        ``start_stage > 0`` resumes from ``cache`` at that stage: valid when the mask differs from the
        cached run only in edges into receivers at or after it.  ``record`` returns this run's cache
        (gradient-free runs only)."""
        g = self.graph
        removed, qkv_mask = self.split_mask(mask)
        differentiable = torch.is_grad_enabled() and removed.requires_grad
        self.n_forward += 1
        if start_stage == 0:
            embeds = self.embed(self.tokens)
            n_embed = len(embeds)
            batch, pos, d_model = embeds[0].shape
            buffer = torch.empty(g.n_senders, batch, pos, d_model, device=self.device, dtype=self.dtype)
            diff = SenderDiffs(buffer, differentiable)
            diff.write(0, torch.stack(embeds) - self.ablation.senders[:n_embed])
            resid = sum(embeds[1:], embeds[0])
        else:
            assert cache is not None, "restarting a run needs the cache of an earlier one"
            assert not differentiable, "restarting from a cache is for gradient-free search"
            diff = SenderDiffs(self.scratch_from(cache, g.n_senders_before_stage(start_stage)), False)
            resid = cache.resid[start_stage]
        stages: list[torch.Tensor] = [resid] * start_stage if record else []
        qkv: list[torch.Tensor] = []

        for layer in range(start_stage // 2, g.n_layers):
            if 2 * layer >= start_stage:
                if record:
                    stages.append(resid)
                resid, layer_qkv = self.attention(layer, resid, diff, removed, qkv_mask)
                if record:
                    qkv.append(layer_qkv)
            if g.arch.has_mlps:
                if record:
                    stages.append(resid)
                resid = self.mlp(layer, resid, diff, removed)
            elif record:
                stages.append(resid)  # attention-only: the MLP stage is a no-op
        if record:
            stages.append(resid)

        final = self.receiver_input(g.resid_post_row, g.n_senders, resid, diff, removed)
        if positions is not None:
            final = gather_positions(final, positions)
        logits = self.unembed(final)
        return logits, (SenderCache(diff=diff.buffer.clone() if start_stage else diff.buffer, resid=stages, qkv=qkv)
                        if record else None)

    def logits(self, mask: EdgeMask | torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        return self.run(mask, positions)[0]


def _put_heads(qkv: torch.Tensor, which: torch.Tensor, head: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """qkv [3, batch, pos, H, d_head] with qkv[which[i], :, :, head[i]] = values[i] (out of place,
    so that gradients reach both the shared projection and the per-head ones)."""
    three, batch, pos, n_heads, d_head = qkv.shape
    flat = qkv.permute(0, 3, 1, 2, 4).reshape(three * n_heads, batch, pos, d_head)
    index = (which * n_heads + head).view(-1, 1, 1, 1).expand_as(values)
    flat = flat.scatter(0, index, values)
    return flat.view(three, n_heads, batch, pos, d_head).permute(0, 2, 3, 1, 4)


def gather_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [batch, pos, ...] at positions [batch, k] -> [batch, k, ...]."""
    index = positions.to(x.device).view(*positions.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return x.gather(1, index)


# ---- where ablated values come from ---------------------------------------------------------
@torch.no_grad()
def record_activations(model: HookedTransformer, graph: Graph, tokens: torch.Tensor) -> Ablation:
    """Every sender's value and every head's q/k/v on ``tokens`` (the unpatched model): an
    unpatched run against an all-zero ablation stores exactly the values themselves."""
    kw = dict(dtype=model.cfg.dtype, device=tokens.device)
    nothing = Ablation("zero", senders=torch.zeros(graph.n_senders, 1, 1, 1, **kw), qkv=torch.zeros(1, **kw))
    _, cache = PatchEngine(model, graph, tokens, nothing).run(graph.full_mask(), record=True)
    assert cache is not None
    return Ablation("recorded", senders=cache.diff, qkv=torch.stack(cache.qkv))


def make_ablation(kind: str, model: HookedTransformer, graph: Graph, clean: torch.Tensor,
                  corrupted: torch.Tensor) -> Ablation:
    """``corrupted``: interchange with the corrupted prompts; ``zero``: zeros; ``mean``: the
    corrupted prompts' mean per position; ``mean_all``: their mean over prompts and positions."""
    if kind == "zero":
        d, dh = model.cfg.d_model, model.cfg.d_head
        L, H = graph.n_layers, graph.n_heads
        kw = dict(dtype=model.cfg.dtype, device=model.W_E.device)
        return Ablation("zero", senders=torch.zeros(graph.n_senders, 1, 1, d, **kw),
                        qkv=torch.zeros(L, 3, 1, 1, H, dh, **kw))
    if clean.shape != corrupted.shape:
        raise ValueError(f"clean prompts {tuple(clean.shape)} and corrupted prompts {tuple(corrupted.shape)} differ in shape")
    recorded = record_activations(model, graph, corrupted)
    if kind == "corrupted":
        return Ablation("corrupted", senders=recorded.senders, qkv=recorded.qkv)
    if kind == "mean":
        return Ablation("mean", senders=recorded.senders.mean(1, keepdim=True),
                        qkv=recorded.qkv.mean(2, keepdim=True))
    if kind == "mean_all":
        return Ablation("mean_all", senders=recorded.senders.mean((1, 2), keepdim=True),
                        qkv=recorded.qkv.mean((2, 3), keepdim=True))
    raise ValueError(f"unknown corruption {kind!r}; choose one of corrupted, zero, mean, mean_all")
