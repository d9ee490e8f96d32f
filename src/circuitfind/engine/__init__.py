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

Removing a head's q/k/v edge gives the head its ablated query/key/value: the corrupted run's
``hook_q``, as in ACDC.  Zero ablation, as the reference implementation defines it, takes every
ablated value from one forward in which every sender is zeroed: the senders' are zero, but a head's
q/k/v there is what its biases make of the residual that is left (the attention output biases
written before it, layer norm's bias, ``b_Q``/``b_K``/``b_V``), not zero.

``shuffle_positions`` (models whose positional embedding is its own sender, tracr): the corrupted
run reads at position i the positional embedding of position ``perm[i]``, ``perm`` drawn as the
reference does (``torch.manual_seed(49)``, ``torch.randperm(n_pos)``), so that interchange
ablation, whose clean and corrupted prompts share every position, can see positional edges.

Today's blocks use the model's own modules wherever the maths is not the patching itself, so it
cannot drift from TransformerLens: ``block.ln1``/``ln2``/``ln_final`` (LayerNorm, LNPre, RMSNorm,
RMSPre), ``block.mlp`` (plain or gated), and the attention module's ``apply_rotary`` (full or
partial rotary, applied to the queries and keys after a removed q/k edge has put the ablated
query or key in place, since hook_q/hook_k are what ACDC patches), ``calculate_attention_scores``
(attention scale and soft-capping; grouped-query attention repeats each key/value head there),
``apply_causal_mask`` (local windows too) and ``calculate_z_scores``.  Grouped-query attention
keeps one [3, H] layout: key/value head g sits in head g's k and v place and the places from
n_key_value_heads on are unused (zero weights, never patched; see ``graph.py``).  Parallel blocks
(GPT-NeoX, Pythia) feed the MLP the block's input, not the attention's output.

A shortformer (Redwood's 2-layer model) adds its positional embedding to every query's and key's
normalised input rather than to the residual stream: there the embedding sender is the token
embedding alone, and the positions are a fixed, never patched part of each query and key.

A gradient through the mask (SP, HISP, EAP) needs every receiver read through its mask row, even
where nothing is removed.  Where a layer's q/k/v rows all agree (the masks 1 and alpha * 1 and the
inputs path of attribution patching), its heads share one input x: the forward is the model's own
(ln1(x) once, one projection), and the backward gives each row its own gradient
``-diff_s . dL/dx_r``, with ``dL/dx_r`` layer norm's VJP of head r's cotangent (``_OneInputHeads``).
Rows that differ take the generic read, which stays the tested oracle (``shared_head_reads=False``).

Gemma-2's post-norms (``use_normalization_before_and_after``) put a layer's heads inside one
norm, ``ln1_post(sum_h head_h + b_O)``: there a receiver reads each earlier layer's attention output
as that norm of its own mix of the layer's heads (``post_norm_inputs``); MLP outputs, already
normalised by ``ln2_post``, stay ordinary senders.

``activation_device="cpu"`` keeps the stored tensors (the ablation, a recorded run, each run's
sender buffer) in host memory and moves each slab to the model's device as it is read
(``choose_activation_device`` picks it when they would not fit on the GPU).

The maths is re-implemented here from the model's weights, so ``check_supported`` refuses
architectures it does not cover; ``reference.py`` computes the same thing with TransformerLens hooks
and the tests hold the two together.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer
from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre
from transformer_lens.utilities import apply_softcap

from ..core.graph import Architecture, EdgeMask, Graph


class UnsupportedModelError(ValueError):
    """The model uses a feature the patching engine does not implement."""


# Config flags whose maths the engine does not re-implement.  (Gemma-2's
# use_normalization_before_and_after is supported: see ``post_norm_inputs``.)
UNSUPPORTED_FLAGS = ("use_qk_norm", "use_attention_sinks", "use_logn_attn",
                     "ungroup_grouped_query_attention", "load_in_4bit", "use_split_qkv_normalized_input")
POSITIONAL_EMBEDDINGS = ("standard", "shortformer", "rotary")


def check_supported(model: HookedTransformer) -> None:
    cfg = model.cfg
    problems = []
    if cfg.positional_embedding_type not in POSITIONAL_EMBEDDINGS:
        problems.append(f"positional_embedding_type={cfg.positional_embedding_type!r} "
                        f"(only {', '.join(map(repr, POSITIONAL_EMBEDDINGS))})")
    for flag in UNSUPPORTED_FLAGS:
        if getattr(cfg, flag, False):
            problems.append(f"{flag}=True")
    if getattr(cfg, "original_architecture", None) in _post_norm_architectures():
        problems.append(f"post-norm blocks ({cfg.original_architecture})")
    if getattr(cfg, "use_normalization_before_and_after", False) and cfg.normalization_type not in ("RMS", "RMSPre"):
        # TransformerLens builds the post-norms for RMS models only (Gemma-2)
        problems.append(f"use_normalization_before_and_after with normalization_type={cfg.normalization_type!r}")
    if getattr(cfg, "clip_qkv", None) is not None:
        problems.append("clip_qkv")
    if cfg.attention_dir not in ("causal", "bidirectional"):
        problems.append(f"attention_dir={cfg.attention_dir!r}")
    if problems:
        raise UnsupportedModelError(
            f"circuitfind's patching engine does not support {cfg.model_name}: {', '.join(problems)}"
        )


def _post_norm_architectures() -> tuple[str, ...]:
    from transformer_lens.components import transformer_block

    return tuple(getattr(transformer_block, "POST_NORM_ARCHITECTURES", ()))


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
            shared = _weighted_sum(weights[:, first:n], self.prefix[first:n], self.fetch)
            if n_senders <= self.n_prefix:
                return shared
        own_first, own_end = max(first - self.n_prefix, 0), n_senders - self.n_prefix
        own_weights = weights[:, self.n_prefix:n_senders]  # column i: body slot i
        if not self.differentiable:
            own = _weighted_sum(own_weights[:, own_first:], self.buffer[own_first:own_end], self.fetch)
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


def _weighted_sum(weights: torch.Tensor, slabs: torch.Tensor, fetch: bool = False) -> torch.Tensor:
    """weights [rows, n] @ slabs [n, ...] -> [rows, prod(...)].  ACDC's masks are sparse on one side:
    gather the few slabs with a nonzero weight rather than multiply zeros (a slab is
    batch*pos*d_model numbers).  ``fetch``: the slabs are stored on the CPU (see
    ``_fetched_weighted_sum``)."""
    used = weights.any(0).nonzero().flatten()
    if len(used) <= weights.shape[1] // 4:
        weights, slabs = weights[:, used], slabs.index_select(0, used.to(slabs.device))
    if fetch:
        return _fetched_weighted_sum(weights, slabs)
    return weights @ slabs.flatten(1)


# Slabs moved to the model's device at once when the stored activations live on the CPU: bounds
# the extra device memory a read takes to this much, whatever the number of senders.
FETCH_BYTES = 256 * 2**20


def _fetched_weighted_sum(weights: torch.Tensor, slabs: torch.Tensor) -> torch.Tensor:
    """``weights @ slabs`` for slabs stored off the weights' device, moving at most FETCH_BYTES of
    them there at a time (on a CPU-only machine the moves are no-ops and the sum is the same)."""
    step = max(1, FETCH_BYTES // max(slabs[0].numel() * slabs.element_size(), 1)) if len(slabs) else 1
    total = None
    for first in range(0, max(len(slabs), 1), step):
        part = weights[:, first:first + step] @ slabs[first:first + step].to(weights.device).flatten(1)
        total = part if total is None else total + part
    return total


def _fetched_sum(slabs: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``slabs.sum(0)`` on ``device`` for slabs stored elsewhere, FETCH_BYTES at a time."""
    step = max(1, FETCH_BYTES // max(slabs[0].numel() * slabs.element_size(), 1)) if len(slabs) else 1
    total = None
    for first in range(0, max(len(slabs), 1), step):
        part = slabs[first:first + step].to(device).sum(0)
        total = part if total is None else total + part
    return total


def _per_candidate(x: torch.Tensor, n_candidates: int, dim: int) -> torch.Tensor:
    """Split a candidate-major batch dimension ``dim`` of size k*B into (k, B)."""
    return x.unflatten(dim, (n_candidates, -1))


def _with_prompts(op, x: torch.Tensor, y: torch.Tensor, n_candidates: int, dim: int) -> torch.Tensor:
    """``op(x, y)`` where dimension ``dim`` of ``x`` is a candidate-major batch (k*B) and that of
    ``y`` holds the prompts once (B), broadcasts (1) or already matches: each candidate meets the
    same prompts' values (the ablation, the cached residual)."""
    if n_candidates == 1 or y.shape[dim] in (1, x.shape[dim]):
        return op(x, y)
    return op(_per_candidate(x, n_candidates, dim), y.unsqueeze(dim)).flatten(dim, dim + 1)


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


_SCRATCH = threading.local()  # see PatchEngine.body_buffer


class PatchEngine:
    """Runs ``model`` on ``tokens`` with a mask over ``graph``'s edges, ablating from ``ablation``."""

    def __init__(self, model: HookedTransformer, graph: Graph, tokens: torch.Tensor, ablation: Ablation,
                 position_order: torch.Tensor | None = None, activation_device: str = "model"):
        """``position_order``: position i reads the positional embedding of position
        ``position_order[i]`` (the corrupted run of ``shuffle_positions``).  ``activation_device``:
        where the big stored tensors live, ``model`` (its device) or ``cpu`` (see
        ``choose_activation_device``; ``ablation`` should live there too)."""
        check_supported(model)
        cfg = model.cfg
        if graph.arch != Architecture.from_config(cfg, split_embed=graph.arch.split_embed):
            raise ValueError(f"graph ({graph.describe()}) does not match model {cfg.model_name}")
        self.model, self.graph, self.tokens, self.ablation = model, graph, tokens, ablation
        self.device = next(model.parameters()).device
        self.dtype = cfg.dtype
        if activation_device not in ("model", "cpu"):
            raise ValueError(f"activation_device must be model or cpu, got {activation_device!r}")
        # cpu: every run's sender buffer, the recorded cache (ACDC's prefix, the residual at each
        # stage, each layer's q/k/v) and the ablation stay in host memory; each slab moves to the
        # model's device when read.  Gradients (SP, attribution) keep their own blocks on the device.
        self.activation_device = activation_device
        self.offload = activation_device == "cpu"
        self.storage = torch.device("cpu") if self.offload else self.device
        self.n_forward = 0  # model forwards run (a restarted run counts as one)
        self._ablated_resid: dict[tuple[int, int], torch.Tensor] = {}
        self._qkv_weights: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.shortformer = cfg.positional_embedding_type == "shortformer"
        self.rotary = cfg.positional_embedding_type == "rotary"
        if (self.shortformer or self.rotary) and graph.arch.split_embed:
            raise ValueError(f"a {cfg.positional_embedding_type} model's positional embedding is not in the residual "
                             "stream: it cannot be a sender")
        if position_order is not None and not graph.arch.split_embed:
            raise ValueError("shuffle_positions needs the positional embedding as its own sender (split embeddings)")
        self.position_order = position_order
        # Gemma-2: each layer's attention output (and MLP output) is normalised again before it
        # enters the residual stream; see post_norm_inputs
        self.post_norm = bool(getattr(cfg, "use_normalization_before_and_after", False))
        if self.post_norm:
            self._head_slot = torch.zeros(graph.n_senders, dtype=torch.bool, device=self.device)
            for layer in range(graph.n_layers):
                self._head_slot[graph.head_slots(layer)] = True
            self._ablated_attn: dict[int, torch.Tensor] = {}
        self._unembed_weight: torch.Tensor | None = None  # see unembed
        # A differentiable run reads a layer's heads through one input where their mask rows agree
        # (reads_one_input); False forces the generic read, the oracle it is tested against.
        self.shared_head_reads = True
        self.n_one_input_reads = 0  # layers read so (a test checks the fast path is taken)

    # ---- building blocks -------------------------------------------------------------------
    def fetch(self, stored: torch.Tensor) -> torch.Tensor:
        """A stored tensor on the model's device (a no-op unless activations live on the CPU)."""
        return stored.to(self.device) if self.offload else stored

    def store(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` where stored tensors live."""
        return x.to(self.storage) if self.offload else x

    def summed(self, stored: torch.Tensor) -> torch.Tensor:
        """``stored.sum(0)`` on the model's device."""
        return _fetched_sum(stored, self.device) if self.offload else stored.sum(0)

    def embed(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """The embedding senders' values: [token, positional] when split, else their sum (a
        shortformer: the token embedding alone)."""
        tok = self.model.embed(tokens)
        if self.shortformer or self.rotary:  # positions enter the queries and keys only
            return [tok]
        pos = self.model.pos_embed(tokens)
        if self.position_order is not None:
            pos = pos[:, self.position_order.to(pos.device)]
        return [tok, pos] if self.graph.arch.split_embed else [tok + pos]

    def changed_inputs(self, r: torch.Tensor, row: int, resid: torch.Tensor,
                       diff: SenderDiffs) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Of the receivers whose removed-mask rows are ``r`` [n, n_senders] (one layer's heads or
        one MLP, or several candidates' copies of them; ``row`` is the first one's row), those
        whose input is not simply ``resid`` (something was removed), as (offsets into ``r``,
        the distinct inputs among them [n_distinct, batch, pos, d_model], and which of those each
        offset reads [n_changed]).

        Receivers with the same mask row read the same input, so each distinct row is summed (and
        later normalised) once: a sparse circuit leaves most of a layer's head inputs with every
        edge removed, and on the node graph all receivers of a layer share one row.  (With
        gradients every row stays its own, so that each receiver's mask gets its own gradient.)"""
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
        read = self.post_norm_inputs if self.post_norm else self.inputs_of_rows
        return changed, read(rows, row, resid, diff), source

    def inputs_of_rows(self, r: torch.Tensor, row: int, resid: torch.Tensor, diff: SenderDiffs) -> torch.Tensor:
        """The inputs [n, batch, pos, d_model] of receivers with removed-mask rows ``r`` [n, n_senders].

        A receiver that keeps most of its edges is read as ``resid - removed @ diff``; one that
        removes most as ``ablated_resid + kept @ diff``.  The two are equal, but each sums over the
        fewer senders, and the second is exact when everything is removed (no cancellation of a
        sender's value against itself, which layer norm would amplify under zero ablation)."""
        n_senders = r.shape[1]
        mostly_removed = r.sum(1) > n_senders / 2

        def keeping(rows):  # resid - removed @ diff
            return resid - diff.weighted(rows, n_senders).view(len(rows), *resid.shape)

        def from_ablated(rows):  # kept @ diff + ablated_resid [1, prompts or 1, pos, d_model]
            return _with_prompts(torch.add, diff.weighted(1 - rows, n_senders).view(len(rows), *resid.shape),
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
        """``resid - r @ diffs`` for one gradient-free row ``r`` [n_senders] (the fast reads attach the
        row's gradient themselves), computed so that its own backward stays small: autograd
        through ``r @ diffs`` would give every diff an [n_senders, batch, pos, d_model] gradient.
        A constant row c (EAP-IG's alpha * 1) is ``lerp(resid, ablated_resid, c)`` (the diffs sum
        to ``resid - ablated_resid``; exact at c = 1); a sparse one (the inputs path) reads only
        its nonzero senders; any other (SP's gates) the generic way."""
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

    def post_norm_inputs(self, r: torch.Tensor, row: int, resid: torch.Tensor, diff: SenderDiffs) -> torch.Tensor:
        """``inputs_of_rows`` for post-norm blocks (Gemma-2), where layer l adds
        ``ln1_post(sum_h head_h + b_O)`` to the residual stream: not a sum over its heads.

        Heads stay senders, and receiver r reads each earlier layer's attention output as that
        layer's post-norm of r's own mix of the layer's heads,

            ln1_post_l( sum_h [m_rh * value_h + (1 - m_rh) * ablated_h] + b_O_l ),

        plus every other sender (embeddings, MLPs, whose values ln2_post already normalised) as in
        ``changed_inputs``.  Nothing removed is the model's residual stream; everything removed is
        the ablated run's (each layer's ablated output is the post-norm of its ablated heads); the
        input stays differentiable in the mask.  A receiver that keeps most of its edges starts
        from ``resid`` and replaces the attention output of each layer it removes a head of; one
        that removes most starts from the ablated values and rebuilds every layer's output from
        the heads it keeps (exact when everything is removed, as in ``changed_inputs``)."""
        n_senders, g, k = r.shape[1], self.graph, diff.n_candidates
        shape = (len(r), -1, *resid.shape[1:])
        heads = self._head_slot[:n_senders]
        layers = [l for l in range(g.n_layers) if g.head_slots(l).stop <= n_senders]

        def plus(x, y):  # x [rows, candidates*prompts | prompts, ...] + y [rows | 1, prompts | 1, ...]
            return _with_prompts(torch.add, x, y, k, 1)

        def keeping(removed):
            x = resid.unsqueeze(0) - diff.weighted(removed * ~heads, n_senders).view(shape)
            for l in layers:
                span, (S, A) = g.head_slots(l), diff.attn_sums[l]
                if not removed[:, span].any() and not removed.requires_grad:
                    continue  # this layer's output is the model's
                mixed = plus(-diff.weighted(removed, span.stop, span.start).view(shape), S.unsqueeze(0))
                x = plus(x, self.model.blocks[l].ln1_post(mixed) - A.unsqueeze(0))
            return x

        def from_ablated(kept):
            x = plus(diff.weighted(kept * ~heads, n_senders).view(shape),
                     self.ablated_resid(n_senders, row))
            for l in layers:
                span = g.head_slots(l)
                mixed = plus(diff.weighted(kept, span.stop, span.start).view(shape), self.ablated_attn(l).unsqueeze(0))
                x = plus(x, self.model.blocks[l].ln1_post(mixed))
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
        """Post-norm models: the sum of layer ``layer``'s ablated heads and b_O, before ln1_post."""
        if layer not in self._ablated_attn:
            heads = self.summed(self.ablation.senders[self.graph.head_slots(layer)])
            self._ablated_attn[layer] = heads + self.model.blocks[layer].attn.b_O
        return self._ablated_attn[layer]

    def receiver_input(self, r: torch.Tensor, row: int, resid: torch.Tensor, diff: SenderDiffs) -> torch.Tensor:
        """The input of one receiver, given its removed-mask row for each of ``len(r)`` candidates
        [candidates, n_senders]: [candidates * batch, pos, d_model] (candidate-major)."""
        if len(r) == 1 and self.shared_head_reads and not self.post_norm and torch.is_grad_enabled() and r.requires_grad:
            x = self.input_value(r[0].detach(), row, resid, diff)  # the value; the row's gradient:
            return _OneReceiverRow.apply(x, r, *diff.first_blocks(r.shape[1]))
        changed, x, source = self.changed_inputs(r, row, resid, diff)
        if len(r) == 1:
            return resid if x is None else x[0]
        inputs = resid.unsqueeze(0).repeat(len(r), *([1] * resid.dim()))
        if x is not None:
            inputs[changed] = x[source]
        return inputs.flatten(0, 1)

    def ablated_resid(self, n_senders: int, row: int) -> torch.Tensor:
        """The residual a receiver would read with every edge removed: the ablated values of the
        senders it sees plus the attention biases written before it (never patched)."""
        key = (n_senders, row)
        if key not in self._ablated_resid:
            g, blocks = self.graph, self.model.blocks
            if self.post_norm:  # the heads and b_O: see ablated_attn
                others = ~self._head_slot[:n_senders].to(self.storage)
                self._ablated_resid[key] = self.summed(self.ablation.senders[:n_senders][others])[None]
                return self._ablated_resid[key]
            layer = g.n_layers if row == g.resid_post_row else row // g.rows_per_layer
            own_layer_bias = (g.arch.has_mlps and not g.arch.parallel
                              and row == g.mlp_row(min(layer, g.n_layers - 1)))
            biases = sum((blocks[l].attn.b_O for l in range(layer + (1 if own_layer_bias else 0))),
                         torch.zeros((), dtype=self.dtype, device=self.device))
            self._ablated_resid[key] = (self.summed(self.ablation.senders[:n_senders]) + biases).unsqueeze(0)
        return self._ablated_resid[key]

    def attention(self, layer: int, resid: torch.Tensor, diff: SenderDiffs, r: torch.Tensor,
                  qkv_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s heads.  ``r`` [c, 3H, n_senders] and ``qkv_mask`` [c, 3, H] are the
        layer's removed-mask rows and q/k/v edges for c = 1 (shared by every candidate) or one
        copy per candidate (the stage a batched run tests; ``resid`` then holds the prompts once)."""
        g, block = self.graph, self.model.blocks[layer]
        attn, H = block.attn, g.n_heads
        c, k = r.shape[0], diff.n_candidates
        W, b = self.qkv_weights(layer)  # [3, H, d_model, d_head], [3, H, d_head]
        # Every head reads the unpatched residual unless an edge into it was removed: project that
        # once for all heads (as the model does), then redo only the heads whose input changed.
        bias = b[:, None] if b.dim() == 4 else b[:, None, None]  # [3, 1, (pos | 1), H, d_head]
        if self.reads_one_input(r, block, W, b):
            qkv = self.heads_reading_one_input(layer, resid, diff, r[0], W, bias)
        else:
            qkv = self.heads_reading_own_inputs(layer, resid, diff, r, qkv_mask, W, bias)
        if (qkv_mask != 1).any() or (torch.is_grad_enabled() and qkv_mask.requires_grad):
            w = qkv_mask.transpose(0, 1).reshape(3, c, 1, 1, H, 1)
            mixed = w * _per_candidate(qkv, k, 1) + (1 - w) * self.fetch(self.ablation.qkv[layer]).unsqueeze(1)
            qkv = mixed.flatten(1, 2)
        z = self.attend(attn, qkv)
        result = torch.einsum("bqhe,hed->hbqd", z, attn.W_O)  # one [batch, pos, d] slab per head
        heads = g.head_slots(layer)
        diff.write(heads.start, _with_prompts(torch.sub, result, self.fetch(self.ablation.senders[heads]), k, 1))
        if self.post_norm:
            summed = result.sum(0) + attn.b_O
            diff.attn_sums[layer] = (summed, block.ln1_post(summed))
            return _with_prompts(torch.add, diff.attn_sums[layer][1], resid, k, 0), qkv
        return _with_prompts(torch.add, result.sum(0), resid, k, 0) + attn.b_O, qkv

    def heads_reading_own_inputs(self, layer: int, resid: torch.Tensor, diff: SenderDiffs, r: torch.Tensor,
                                 qkv_mask: torch.Tensor, W: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The generic read: q/k/v [3, c*batch, pos, H, d_head], each distinct changed head input built,
        normalised and projected on its own (any mask; autograd differentiates it as it is)."""
        g, block, H, c = self.graph, self.model.blocks[layer], self.graph.n_heads, r.shape[0]
        rows = r.flatten(0, 1)
        if not (torch.is_grad_enabled() and (r.requires_grad or qkv_mask.requires_grad)):
            # a head input whose q/k/v edge is removed is replaced by its ablated value: its own
            # input is never read (0 * its projection), so it need not be computed
            rows = torch.where(qkv_mask.flatten()[:, None] == 0, 0, rows)
        changed, x, source = self.changed_inputs(rows, layer * g.rows_per_layer, resid, diff)
        if len(changed) < len(rows):
            qkv = torch.einsum("bpd,whde->wbphe", block.ln1(resid), W) + bias
            if c > 1:
                qkv = qkv.repeat(1, c, 1, 1, 1)  # one copy per candidate
        else:  # every head input changed: nothing reads the unpatched projection
            qkv = resid.new_zeros(3, c * resid.shape[0], resid.shape[1], H, W.shape[-1])
        if x is not None:
            which, head = changed % (3 * H) // H, changed % H
            own = torch.einsum("nbpd,nde->nbpe", block.ln1(x)[source], W[which, head]) + bias[which, :, :, head]
            qkv = _put_heads(qkv, changed, own, c)
        return qkv

    def reads_one_input(self, r: torch.Tensor, block, W: torch.Tensor, b: torch.Tensor) -> bool:
        """Whether a differentiable run may read layer ``block``'s heads through one shared input:
        one candidate whose 3H removed-mask rows ``r`` [1, 3H, n_senders] are all equal (attribution's
        masks 1, alpha * 1, and the inputs path), and only the mask asks for a gradient."""
        if not (self.shared_head_reads and torch.is_grad_enabled() and r.requires_grad and r.shape[0] == 1):
            return False
        if self.post_norm:  # a receiver's input is not linear in its row there (post_norm_inputs)
            return False
        if W.requires_grad or b.requires_grad or any(p.requires_grad for p in block.ln1.parameters()):
            return False
        # grouped-query attention: the k/v places from n_kv_heads on own no edge (their rows stay
        # at 1; their zero weights make them read nothing), so only the used places must agree
        H, n_kv = self.graph.n_heads, self.graph.n_kv_heads
        used = torch.cat([r[0, :H + n_kv], r[0, 2 * H:2 * H + n_kv]])
        return bool((used == used[:1]).all())

    def heads_reading_one_input(self, layer: int, resid: torch.Tensor, diff: SenderDiffs, rows: torch.Tensor,
                                W: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """q/k/v [3, batch, pos, H, d_head] when every head of ``layer`` reads the same input x
        (``rows`` [3H, n_senders], all equal).  The forward is the model's: ln1(x) once, projected.
        Each row's gradient is still its own: see ``_OneInputHeads``."""
        self.n_one_input_reads += 1
        # The input's value, without the rows' gradient (the Function gives each row its own):
        # the gradient reaching x is the sum over its receivers, as it reaches resid and the diffs.
        x = self.input_value(rows[0].detach(), layer * self.graph.rows_per_layer, resid, diff)
        return _OneInputHeads.apply(x, rows, self.model.blocks[layer].ln1, W, bias, *diff.first_blocks(rows.shape[1]))

    def attend(self, attn, qkv: torch.Tensor) -> torch.Tensor:
        """z [batch, pos, H, d_head] from the (patched) queries, keys and values [3, batch, pos, H,
        d_head], through the attention module's own functions: rotary, scale, soft-cap, causal or
        local mask, and the repeat of shared key/value heads."""
        n_kv = self.graph.n_kv_heads
        queries, keys, values = qkv[0], qkv[1][:, :, :n_kv], qkv[2][:, :, :n_kv]
        if self.rotary:
            queries, keys = attn.apply_rotary(queries), attn.apply_rotary(keys)
        scores = attn.calculate_attention_scores(queries, keys)
        if self.model.cfg.attention_dir == "causal":
            scores = attn.apply_causal_mask(scores)
        pattern = F.softmax(scores, dim=-1)
        pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)
        return attn.calculate_z_scores(values, pattern)

    def qkv_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """W [3, H, d_model, d_head] and the bias [3, (pos,) H, d_head] of the queries, keys and
        values (a shortformer's bias holds the positional embedding's share of q and k per position;
        under grouped-query attention key/value head g fills head g's place, the rest is zero)."""
        if layer not in self._qkv_weights:
            attn = self.model.blocks[layer].attn
            grouped = self.graph.arch.grouped
            W_K, W_V = (_pad_heads(attn._W_K, self.graph.n_heads), _pad_heads(attn._W_V, self.graph.n_heads)) \
                if grouped else (attn.W_K, attn.W_V)
            b_K, b_V = (_pad_heads(attn._b_K, self.graph.n_heads), _pad_heads(attn._b_V, self.graph.n_heads)) \
                if grouped else (attn.b_K, attn.b_V)
            W = torch.stack((attn.W_Q, W_K, W_V))
            b = torch.stack((attn.b_Q, b_K, b_V))
            if self.shortformer:
                pos = self.model.pos_embed(self.tokens)[0]  # [pos, d_model], the same for every prompt
                qk = torch.einsum("pd,whde->wphe", pos, W[:2])
                b = b[:, None] + torch.cat([qk, torch.zeros_like(qk[:1])])
            self._qkv_weights[layer] = (W, b)
        return self._qkv_weights[layer]

    def mlp(self, layer: int, resid: torch.Tensor, diff: SenderDiffs, r: torch.Tensor,
            block_input: torch.Tensor) -> torch.Tensor:
        """Layer ``layer``'s MLP; ``r`` [c, n_senders]: its removed-mask row, shared (c = 1) or per
        candidate.  It reads ``resid`` (after the attention), or ``block_input`` in a parallel block."""
        g, block = self.graph, self.model.blocks[layer]
        reads = block_input if g.arch.parallel else resid
        out = block.mlp(block.ln2(self.receiver_input(r, g.mlp_row(layer), reads, diff)))
        if self.post_norm:
            out = block.ln2_post(out)
        if out.shape[0] < resid.shape[0]:  # a parallel MLP read the prompts once; the heads, per candidate
            out = out.repeat(resid.shape[0] // out.shape[0], *([1] * (out.dim() - 1)))
        slot = g.mlp_slot(layer)
        k = diff.n_candidates
        diff.write(slot, _with_prompts(torch.sub, out.unsqueeze(0), self.fetch(self.ablation.senders[slot:slot + 1]), k, 1))
        return _with_prompts(torch.add, out, resid, k, 0)

    def body_buffer(self, n: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        """Scratch space for the senders a run recomputes and does not keep, reused between runs
        (a fresh allocation per edge test would cost page faults on every slab) and shared by the
        engines of one thread (the validation and test engines: GPT-2's is 0.7 GB on IOI).  A run
        finishes before the next one starts, so they never hold it at the same time."""
        shape = (n, batch, *like.shape[1:])
        buffers = _SCRATCH.__dict__.setdefault("buffers", {})
        held = buffers.get((self.storage, self.dtype))
        if held is None or held.numel() < math.prod(shape):
            held = buffers[self.storage, self.dtype] = torch.empty(math.prod(shape), device=self.storage,
                                                                  dtype=self.dtype)
        return held[:math.prod(shape)].view(shape)

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """The model's unembedding, computed as TransformerLens does (``F.linear`` on W_U's
        transpose, so the logits match it bit for bit) but with that transpose made contiguous
        once: TransformerLens 3.9 copies it on every call, 150 MB for GPT-2's vocabulary."""
        ln_final = getattr(self.model, "ln_final", None)
        if self._unembed_weight is None:
            self._unembed_weight = self.model.unembed.W_U.T.contiguous()
        logits = F.linear(ln_final(x) if ln_final is not None else x, self._unembed_weight, self.model.unembed.b_U)
        return apply_softcap(logits, getattr(self.model.cfg, "output_logits_soft_cap", -1.0))

    # ---- the patched forward -----------------------------------------------------------------
    def split_mask(self, mask: EdgeMask | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Edge mask values [..., n_edges] -> (removed [..., receivers, senders], q/k/v masks [..., L, 3, H])."""
        g = self.graph
        values = mask.values if isinstance(mask, EdgeMask) else mask
        slots = g.slot_values(values.to(device=self.device, dtype=self.dtype))
        n_resid = g.n_rows * g.n_senders
        removed = 1 - slots[..., :n_resid].unflatten(-1, (g.n_rows, g.n_senders))
        qkv_mask = slots[..., n_resid:].unflatten(-1, (g.n_layers, 3, g.n_heads))
        return removed, qkv_mask

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
        removed, qkv_mask = self.split_mask(mask)
        batched = removed.dim() == 3
        removed, qkv_mask = (removed, qkv_mask) if batched else (removed[None], qkv_mask[None])
        n_candidates = removed.shape[0]
        differentiable = torch.is_grad_enabled() and removed.requires_grad
        if cache is None and not (batched or record or differentiable or self.post_norm) \
                and bool((removed[0, g.resid_post_row] == 1).all()):
            return (self.output_of_ablated(positions) if want_logits else None), None
        self.n_forward += 1
        if cache is None:
            assert start_stage == 0 and not batched, "restarting a run or batching masks needs the cache of a full run"
            embeds = self.embed(self.tokens)
            n_embed = len(embeds)
            batch, pos, d_model = embeds[0].shape
            # a recorded run's senders are kept (its cache); any other run's are scratch, reused
            buffer = None if differentiable else torch.empty(
                g.n_senders, batch, pos, d_model, device=self.storage, dtype=self.dtype) if record \
                else self.body_buffer(g.n_senders, batch, embeds[0])
            diff = SenderDiffs(buffer, differentiable, fetch=self.offload)
            diff.write(0, torch.stack(embeds) - self.fetch(self.ablation.senders[:n_embed]))
            resid = sum(embeds[1:], embeds[0])
        else:
            assert not differentiable, "restarting from a cache is for gradient-free search"
            assert not record, "a restarted run is not recorded"
            if batched:
                self.check_candidates(removed, qkv_mask, start_stage)
            n_cached = g.n_senders_before_stage(start_stage)
            resid = self.fetch(cache.resid[start_stage])
            body = self.body_buffer(g.n_senders - n_cached, n_candidates * resid.shape[0], resid)
            diff = SenderDiffs(body, False, prefix=cache.diff[:n_cached], n_candidates=n_candidates,
                               fetch=self.offload)
            if self.post_norm:  # the layers below the restart, from the cache
                diff.attn_sums = {l: (self.fetch(S), self.fetch(A)) for l, (S, A) in cache.attn_sums.items()
                                  if 2 * l < start_stage}
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
            block_input = resid if stage >= start_stage else self.fetch(cache.resid[stage])
            if stage >= start_stage:
                if record:
                    stages.append(self.store(resid))
                r = rows(stage, layer * g.rows_per_layer, 3 * g.n_heads, g.n_senders_before_heads(layer))
                layer_qkv_mask = (qkv_mask if stage == start_stage else qkv_mask[:1])[:, layer]
                resid, layer_qkv = self.attention(layer, resid, diff, r, layer_qkv_mask)
                if record:
                    qkv.append(self.store(layer_qkv))
            if record:
                stages.append(self.store(resid))  # before the MLP (attention-only models: a stage that does nothing)
            if g.arch.has_mlps:
                r = rows(stage + 1, g.mlp_row(layer), 1, g.n_senders_before_mlp(layer))[:, 0]
                resid = self.mlp(layer, resid, diff, r, block_input)
        if record:
            stages.append(self.store(resid))

        final = self.receiver_input(rows(2 * g.n_layers, g.resid_post_row, 1, g.n_senders)[:, 0],
                                    g.resid_post_row, resid, diff)
        if not want_logits:
            return None, (SenderCache(diff=diff.buffer, resid=stages, qkv=qkv) if record else None)
        if positions is not None:
            final = gather_positions(final, positions.repeat(n_candidates, 1) if batched else positions)
        logits = self.unembed(final)
        if batched:
            logits = _per_candidate(logits, n_candidates, 0)
        attn_sums = {l: (self.store(S), self.store(A)) for l, (S, A) in diff.attn_sums.items()}
        cached = SenderCache(diff=diff.buffer, resid=stages, qkv=qkv, attn_sums=attn_sums) if record else None
        return logits, cached

    def output_of_ablated(self, positions: torch.Tensor | None) -> torch.Tensor:
        """The logits of a run in which the final residual reads no sender's own value (every
        edge into it removed): the unembedded ablated residual, which is what the full forward
        computes for that receiver (``ablated_resid`` plus a sum over no senders)."""
        final = self.ablated_resid(self.graph.n_senders, self.graph.resid_post_row)[0]
        final = final.expand(self.tokens.shape[0], self.tokens.shape[1], -1)
        return self.unembed(final if positions is None else gather_positions(final, positions))

    def check_candidates(self, removed: torch.Tensor, qkv_mask: torch.Tensor, start_stage: int) -> None:
        """Batched masks must agree everywhere but in the receivers read at ``start_stage``."""
        g = self.graph
        differs = (removed != removed[:1]).any(0).any(1)  # [receivers]
        rows = differs.nonzero().flatten().tolist()
        layers = (qkv_mask != qkv_mask[:1]).any(0).flatten(1).any(1).nonzero().flatten().tolist()
        stages = {g.slot_stage(row * g.n_senders) for row in rows} | {2 * layer for layer in layers}
        if stages - {start_stage}:
            raise ValueError(f"batched masks may differ only in edges read at stage {start_stage}, "
                             f"not at stages {sorted(stages - {start_stage})}")

    def logits(self, mask: EdgeMask | torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        return self.run(mask, positions)[0]


class _OneInputHeads(torch.autograd.Function):
    """q/k/v = ln1(x) @ W + bias from one input x that 3H receivers share, with each receiver's
    mask row given its own gradient.

    A receiver r reads x_r = resid - sum_s removed_rs diff_s, so dL/d removed_rs = -diff_s . G_r
    with G_r = dL/dx_r.  The receivers' inputs are equal here but their gradients are not: G_r is
    layer norm's vector-Jacobian product at x applied to head r's own cotangent (dL/dq_r) W_r^T.
    The backward computes those 3H products (``_norm_input_grads``), the rows' gradient from them,
    and x's gradient as their sum (every receiver read x).  The forward saves x and its one
    projection: the generic path would keep 3H inputs, normalised inputs and projections."""

    @staticmethod
    def forward(ctx, x, rows, ln, W, bias, *sender_diffs):
        # The sender diffs (upstream of this node) go through save_for_backward: kept on ctx
        # directly, the run's later blocks would form a reference cycle with this node.
        projected = torch.einsum("bpd,whde->wbphe", ln(x), W)
        ctx.save_for_backward(x, W, projected, *sender_diffs)
        ctx.ln = ln
        return projected + bias

    @staticmethod
    def backward(ctx, grad_qkv):
        x, W, projected, *sender_diffs = ctx.saved_tensors
        grad_inputs = _norm_input_grads(ctx.ln, x, W, projected, grad_qkv)  # G_r [3H, batch, pos, d_model]
        grad_rows = -_dot_senders(grad_inputs, sender_diffs) if ctx.needs_input_grad[1] else None
        return grad_inputs.sum(0), grad_rows, None, None, None, *([None] * len(sender_diffs))


class _OneReceiverRow(torch.autograd.Function):
    """x itself (one receiver's input: an MLP's or the final residual, [batch, pos, d_model], computed
    from its row without the row's gradient), with the row [1, n_senders] given its gradient
    -diff_s . dL/dx.  Autograd on resid - row @ diffs would also build each diff's gradient
    -row_s * dL/dx, a [n_senders, batch, pos, d_model] outer product, zero at the full mask."""

    @staticmethod
    def forward(ctx, x, row, *sender_diffs):
        ctx.save_for_backward(*sender_diffs)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_x):
        grad_row = -_dot_senders(grad_x.unsqueeze(0), ctx.saved_tensors) if ctx.needs_input_grad[1] else None
        return grad_x, grad_row, *([None] * len(ctx.saved_tensors))


def _dot_senders(grads: torch.Tensor, sender_diffs) -> torch.Tensor:
    """grads [n, batch, pos, d_model] . each sender's diff (blocks [k, batch, pos, d_model]) -> [n, n_senders]."""
    # reshape, not flatten: HISP's per-prompt backward runs this under autograd's vmap, which has no rule for flatten
    flat = grads.reshape(grads.shape[0], -1)
    return torch.cat([flat @ diffs.reshape(len(diffs), -1).T for diffs in sender_diffs], 1)


def _norm_input_grads(ln, x: torch.Tensor, W: torch.Tensor, projected: torch.Tensor,
                      grad_qkv: torch.Tensor) -> torch.Tensor:
    """G_r = dL/dx for each head input r when head r computes ln(x) @ W_r (``projected``, [3, batch,
    pos, H, d_head]): [3H, batch, pos, d_model], from the heads' cotangents grad_qkv (shaped as
    ``projected``).

    TransformerLens' four norms (ln(x) = w * yhat (+ b), yhat = xc / s, s = sqrt(mean(xc^2) + eps),
    xc = x minus its mean for LN, x itself for RMS, w = 1 for the Pre variants) have the VJP
    G = (g' - yhat <g', yhat> / d) / s with g' = (w * g) centred (LN) or not (RMS).  Folding w, the
    centring and 1/s into the weights and the small cotangents leaves one [3H, batch, pos, d_model]
    product and one correction, where autograd would make a dozen passes over it.  Any other
    module: torch.func's VJP of the module itself, batched over the heads.  (Only matmul, permute
    and reshape touch the cotangents: HISP's per-prompt backward runs this under autograd's vmap,
    which has no rule for einsum or flatten.)"""
    centred = isinstance(ln, (LayerNorm, LayerNormPre))
    known = centred or isinstance(ln, (RMSNorm, RMSNormPre, torch.nn.Identity))
    if not known or x.dtype not in (torch.float32, torch.float64):
        _, ln_vjp = torch.func.vjp(ln, x.detach())
        return torch.func.vmap(ln_vjp)(_head_cotangents(grad_qkv, W, x.shape))[0]
    if isinstance(ln, torch.nn.Identity):
        return _head_cotangents(grad_qkv, W, x.shape)
    # yhat @ (w W)_r: the forward's projection less layer norm's bias term b @ W_r
    normed_projected = projected - torch.einsum("d,whde->whe", ln.b, W)[:, None, None] \
        if isinstance(ln, LayerNorm) else projected
    if isinstance(ln, (LayerNorm, RMSNorm)):
        W = W * ln.w[:, None]  # [3, H, d_model, d_head]
    if centred:
        x = x - x.mean(-1, keepdim=True)
        W = W - W.mean(2, keepdim=True)  # g' centred = grad_q @ (centred W)^T
    scale = (x.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()  # [batch, pos, 1]
    normed = x / scale
    grad_scaled = grad_qkv / scale.unsqueeze(-1)  # g / s, [3, batch, pos, H, d_head]
    grads = _head_cotangents(grad_scaled, W, x.shape)  # g' / s
    # <g', yhat> / (d s) per head and token: yhat is centred, so <g' centred, yhat> = <g', yhat>
    dots = (grad_scaled * normed_projected).sum(-1) / x.shape[-1]  # [3, b, p, H]
    return grads.addcmul_(normed, dots.permute(0, 3, 1, 2).reshape(-1, *x.shape[:-1], 1), value=-1)


def _head_cotangents(grad_qkv: torch.Tensor, W: torch.Tensor, shape) -> torch.Tensor:
    """(dL/dq_r) W_r^T for every head place r: [3, batch, pos, H, d_head] -> [3H, batch, pos, d_model]."""
    three, heads, d_model, d_head = W.shape
    per_head = grad_qkv.permute(0, 3, 1, 2, 4).reshape(three * heads, -1, d_head)  # [3H, batch*pos, d_head]
    return per_head.matmul(W.reshape(three * heads, d_model, d_head).transpose(1, 2)).reshape(-1, *shape)


def _put_heads(qkv: torch.Tensor, index: torch.Tensor, values: torch.Tensor, n_candidates: int) -> torch.Tensor:
    """qkv [3, c*batch, pos, H, d_head] (candidate-major) with the head input of offset
    ``index[i]`` = candidate * 3H + which * H + head set to values[i] [batch, pos, d_head] (out of
    place, so that gradients reach both the shared projection and the per-head ones)."""
    three, cb, pos, n_heads, d_head = qkv.shape
    c = n_candidates
    flat = qkv.view(three, c, cb // c, pos, n_heads, d_head).permute(1, 0, 4, 2, 3, 5)
    flat = flat.reshape(c * three * n_heads, cb // c, pos, d_head)
    flat = flat.scatter(0, index.view(-1, 1, 1, 1).expand_as(values), values)
    return flat.view(c, three, n_heads, cb // c, pos, d_head).permute(1, 0, 3, 4, 2, 5).reshape(qkv.shape)


def _pad_heads(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Key/value heads [n_kv, ...] -> [n_heads, ...], zeros after the n_kv real ones."""
    return torch.cat([weight, weight.new_zeros(n_heads - weight.shape[0], *weight.shape[1:])])


def gather_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [batch, pos, ...] at positions [batch, k] -> [batch, k, ...]."""
    index = positions.to(x.device).view(*positions.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return x.gather(1, index)


# ---- where the stored activations live --------------------------------------------------------
ACTIVATION_DEVICES = ("auto", "model", "cpu")
# auto leaves this much of the GPU free for the forwards themselves (their transient tensors, the
# batched candidates' recomputed layers) beyond the stored activations.
GPU_HEADROOM_BYTES = 2 * 2**30


def stored_activation_bytes(graph: Graph, cfg, n_prompts: int, n_pos: int) -> int:
    """What one engine keeps between runs, in bytes: the ablation's sender values and q/k/v, a
    recorded run (ACDC's cache: the same again, plus the residual at every stage) and one run's
    sender buffer."""
    itemsize = torch.empty((), dtype=cfg.dtype).element_size()
    slab = n_prompts * n_pos * cfg.d_model
    qkv = graph.n_layers * 3 * n_prompts * n_pos * graph.n_heads * cfg.d_head
    return itemsize * (3 * graph.n_senders * slab + 2 * qkv + (2 * graph.n_layers + 1) * slab)


def choose_activation_device(setting: str, model_device: torch.device | str, needed_bytes: int,
                             free_bytes: int | None = None) -> str:
    """``model`` or ``cpu``: where an engine keeps its stored activations.  ``auto`` keeps them on
    the model's device unless that is a GPU whose free memory (``torch.cuda.mem_get_info``, or
    ``free_bytes``) less GPU_HEADROOM_BYTES cannot hold ``needed_bytes``."""
    if setting not in ACTIVATION_DEVICES:
        raise ValueError(f"model.activation_device must be one of {', '.join(ACTIVATION_DEVICES)}, got {setting!r}")
    device = torch.device(model_device)
    if setting != "auto":
        return setting
    if device.type != "cuda":
        return "model"  # host memory: keeping a copy on the CPU would save nothing
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    return "cpu" if needed_bytes > free_bytes - GPU_HEADROOM_BYTES else "model"


# ---- where ablated values come from ---------------------------------------------------------
POSITION_SHUFFLE_SEED = 49  # the reference implementation's


def shuffled_positions(n_pos: int) -> torch.Tensor:
    """The reference's permutation: ``torch.manual_seed(49)`` then ``torch.randperm(n_pos)`` (a
    generator of its own, seeded alike, draws the same numbers without touching the global one)."""
    return torch.randperm(n_pos, generator=torch.Generator().manual_seed(POSITION_SHUFFLE_SEED))


@torch.no_grad()
def record_activations(model: HookedTransformer, graph: Graph, tokens: torch.Tensor,
                       position_order: torch.Tensor | None = None, activation_device: str = "model") -> Ablation:
    """Every sender's value and every head's q/k/v on ``tokens`` (the unpatched model): an
    unpatched run against an all-zero ablation stores exactly the values themselves."""
    kw = dict(dtype=model.cfg.dtype, device=tokens.device)
    nothing = Ablation("zero", senders=torch.zeros(graph.n_senders, 1, 1, 1, **kw), qkv=torch.zeros(1, **kw))
    engine = PatchEngine(model, graph, tokens, nothing, position_order=position_order,
                         activation_device=activation_device)
    _, cache = engine.run(graph.full_mask(), record=True, want_logits=False)
    assert cache is not None
    return Ablation("recorded", senders=cache.diff, qkv=torch.stack(cache.qkv))


@torch.no_grad()
def zero_ablation(model: HookedTransformer, graph: Graph, tokens: torch.Tensor,
                  activation_device: str = "model") -> Ablation:
    """Every sender's ablated value is zero; each head's q/k/v is the one computed in a forward with
    every sender zeroed (on one prompt of ``tokens``: nothing there depends on the tokens).  That
    forward is this engine's with every residual edge removed and every q/k/v edge kept, against
    literal zeros."""
    cfg = model.cfg
    kw = dict(dtype=cfg.dtype, device=model.W_E.device)
    literal = Ablation("zero", senders=torch.zeros(graph.n_senders, 1, 1, cfg.d_model, **kw),
                       qkv=torch.zeros(graph.n_layers, 3, 1, 1, graph.n_heads, cfg.d_head, **kw))
    fine = graph if graph.granularity == "qkv" else Graph(graph.arch, "qkv")
    only_qkv = torch.tensor([fine.component(e.sender) == e.receiver for e in fine.edges], dtype=cfg.dtype)
    engine = PatchEngine(model, fine, tokens[:1].to(kw["device"]), literal, activation_device=activation_device)
    _, cache = engine.run(only_qkv, record=True, want_logits=False)
    assert cache is not None
    return Ablation("zero", senders=engine.store(literal.senders), qkv=torch.stack(cache.qkv))


def make_ablation(kind: str, model: HookedTransformer, graph: Graph, clean: torch.Tensor,
                  corrupted: torch.Tensor, shuffle_positions: bool = False, activation_device: str = "model") -> Ablation:
    """``corrupted``: interchange with the corrupted prompts; ``zero``: every sender zeroed;
    ``mean``: the corrupted prompts' mean per position; ``mean_all``: their mean over prompts and
    positions.  ``shuffle_positions`` shuffles the corrupted run's positional embedding (it has no
    effect on zero ablation, which has no corrupted run).  ``activation_device``: where the
    ablated values are kept (``model`` or ``cpu``, as the engine that reads them)."""
    check_supported(model)  # an unsupported model is refused by name before any forward runs
    if kind == "zero":
        return zero_ablation(model, graph, clean, activation_device)
    if shuffle_positions and not graph.arch.split_embed:
        raise ValueError("corruption.shuffle_positions needs a model whose positional embedding is its own "
                         "sender (the tracr models)")
    if clean.shape != corrupted.shape:
        raise ValueError(f"clean prompts {tuple(clean.shape)} and corrupted prompts {tuple(corrupted.shape)} differ in shape")
    order = shuffled_positions(corrupted.shape[1]) if shuffle_positions else None
    recorded = record_activations(model, graph, corrupted, order, activation_device)
    recorded_order = None if order is None else tuple(order.tolist())
    if kind == "corrupted":
        return Ablation("corrupted", senders=recorded.senders, qkv=recorded.qkv, position_order=recorded_order)
    if kind == "mean":
        return Ablation("mean", senders=recorded.senders.mean(1, keepdim=True),
                        qkv=recorded.qkv.mean(2, keepdim=True), position_order=recorded_order)
    if kind == "mean_all":
        return Ablation("mean_all", senders=recorded.senders.mean((1, 2), keepdim=True),
                        qkv=recorded.qkv.mean((2, 3), keepdim=True), position_order=recorded_order)
    raise ValueError(f"unknown corruption {kind!r}; choose one of corrupted, zero, mean, mean_all")
