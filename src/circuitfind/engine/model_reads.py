"""What the engine reads of a TransformerLens model: every call into its modules is made here.

The patched forwards (``plain.py`` and the fast ``PatchEngine``) compute only the patching
themselves; everything else is the model's own code, reached through ``ModelReads``: the
embeddings, each block's norms (LayerNorm, LNPre, RMSNorm, RMSPre), the attention module's
``apply_rotary`` (full or partial rotary), ``calculate_attention_scores`` (scale, soft-cap;
grouped-query attention repeats each key/value head there), ``apply_causal_mask`` (local windows
too) and ``calculate_z_scores``, the MLP (plain or gated), Gemma-2's post-norms and the soft-capped
unembedding.  ``norm_parts`` tells the fast paths (the gradient's, the nodes-only forward's) which of
TransformerLens' norms it has, to fold its weight and bias into the projections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.graph import Graph

# The engine reads a model through its model view (``models/view``): a TransformerLens 3
# HookedTransformer, or a TransformerLens 4 bridge wrapped as one; it imports neither.
ModelView = object


def has_post_norms(cfg) -> bool:
    """Gemma-2's blocks: each attention and MLP output is normalised again (``ln1_post``,
    ``ln2_post``) before it enters the residual stream."""
    return bool(getattr(cfg, "use_normalization_before_and_after", False))


@dataclass(frozen=True)
class NormParts:
    """One of TransformerLens' norms as ``w * (xc / sqrt(mean(xc^2) + eps)) + b``, with xc = x minus
    its mean when ``centred`` (LayerNorm, LNPre) and x itself otherwise (RMSNorm, RMSPre); ``w`` and
    ``b`` None where the norm has none; ``identity``: no norm at all."""

    identity: bool
    centred: bool = False
    w: torch.Tensor | None = None
    b: torch.Tensor | None = None
    eps: float = 0.0


NORM_KINDS = ("LayerNorm", "LayerNormPre", "RMSNorm", "RMSNormPre")


def norm_kind(ln) -> str | None:
    """Which of TransformerLens' four norms ``ln`` computes, or None: a view's norm says so in
    ``norm_kind``; TransformerLens 3's own classes are known by name (the engine does not import
    TransformerLens)."""
    cls = type(ln)
    if cls not in _CLASS_KINDS:  # each class looked at once (this runs in every backward)
        _CLASS_KINDS[cls] = next((c.__name__ for c in cls.__mro__
                                  if c.__module__.startswith("transformer_lens.") and c.__name__ in NORM_KINDS), None)
    return _CLASS_KINDS[cls] or getattr(ln, "norm_kind", None)


_CLASS_KINDS: dict[type, str | None] = {}


def norm_parts(ln) -> NormParts | None:
    """``ln`` as ``NormParts``, or None for a module that is none of TransformerLens' four norms."""
    if isinstance(ln, torch.nn.Identity):
        return NormParts(identity=True)
    kind = norm_kind(ln)
    if kind is None:
        return None
    return NormParts(identity=False, centred=kind in ("LayerNorm", "LayerNormPre"),
                     w=ln.w if kind in ("LayerNorm", "RMSNorm") else None,
                     b=ln.b if kind == "LayerNorm" else None, eps=ln.eps)


def pad_heads(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Key/value heads [n_kv, ...] -> [n_heads, ...], zeros after the n_kv real ones."""
    return torch.cat([weight, weight.new_zeros(n_heads - weight.shape[0], *weight.shape[1:])])


class ModelReads:
    """The model's own modules and weights, as the patched forward uses them on ``tokens``."""

    def __init__(self, model: ModelView, graph: Graph, tokens: torch.Tensor):
        cfg = model.cfg
        self.model, self.graph, self.tokens = model, graph, tokens
        # each block's ln1, ln2, mlp, attn (and ln1_post, ln2_post); plain lists, as nn.Module's
        # attribute lookup is slow on the hot path
        self.blocks = list(model.blocks)
        self.attns = [block.attn for block in self.blocks]
        # a view's attention may take the softmax in another dtype, as its model does (a bridge's
        # Llama: float32); TransformerLens 3's attention has none of its own
        self.softmaxes = [getattr(attn, "softmax", None) for attn in self.attns]
        self.device = next(model.parameters()).device
        self.dtype = cfg.dtype
        self.shortformer = cfg.positional_embedding_type == "shortformer"
        self.rotary = cfg.positional_embedding_type == "rotary"
        self.post_norm = has_post_norms(cfg)
        self.causal = cfg.attention_dir == "causal"
        self.soft_cap = getattr(cfg, "output_logits_soft_cap", -1.0)
        self._qkv_weights: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._unembed_weight: torch.Tensor | None = None  # see unembed
        self._norms_centre: bool | None = None  # see norms_centre

    def norms_centre(self) -> bool:
        """Whether every norm that reads a receiver (each block's ln1 and ln2, the final norm) is a
        LayerNorm (or LNPre): then a receiver's output depends on its input only through the input
        less its mean over d_model."""
        if self._norms_centre is None:
            norms = [block.ln1 for block in self.blocks] + [getattr(self.model, "ln_final", None)]
            if self.graph.arch.has_mlps:
                norms += [block.ln2 for block in self.blocks]
            parts = [norm_parts(ln) if ln is not None else None for ln in norms]
            self._norms_centre = all(p is not None and not p.identity and p.centred for p in parts)
        return self._norms_centre

    def b_O(self, layer: int) -> torch.Tensor:
        """The attention output bias of ``layer``: written by no sender, never patched."""
        return self.attns[layer].b_O

    def embed(self, tokens: torch.Tensor, position_order: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The embedding senders' values: [token, positional] when split, else their sum (a
        shortformer or rotary model: the token embedding alone).  ``position_order``: position i
        reads the positional embedding of position ``position_order[i]``."""
        tok = self.model.embed(tokens)
        if self.shortformer or self.rotary:  # positions enter the queries and keys only
            return [tok]
        pos = self.model.pos_embed(tokens)
        if position_order is not None:
            pos = pos[:, position_order.to(pos.device)]
        return [tok, pos] if self.graph.arch.split_embed else [tok + pos]

    def qkv_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """W [3, H, d_model, d_head] and the bias [3, (pos,) H, d_head] of the queries, keys and
        values (a shortformer's bias holds the positional embedding's share of q and k per position;
        under grouped-query attention key/value head g fills head g's place, the rest is zero)."""
        if layer not in self._qkv_weights:
            attn = self.attns[layer]
            grouped, H = self.graph.arch.grouped, self.graph.n_heads
            W_K, W_V = (pad_heads(attn._W_K, H), pad_heads(attn._W_V, H)) if grouped else (attn.W_K, attn.W_V)
            b_K, b_V = (pad_heads(attn._b_K, H), pad_heads(attn._b_V, H)) if grouped else (attn.b_K, attn.b_V)
            W = torch.stack((attn.W_Q, W_K, W_V))
            b = torch.stack((attn.b_Q, b_K, b_V))
            if self.shortformer:
                pos = self.model.pos_embed(self.tokens)[0]  # [pos, d_model], the same for every prompt
                qk = torch.einsum("pd,whde->wphe", pos, W[:2])
                b = b[:, None] + torch.cat([qk, torch.zeros_like(qk[:1])])
            self._qkv_weights[layer] = (W, b)
        return self._qkv_weights[layer]

    def attend(self, layer: int, qkv: torch.Tensor) -> torch.Tensor:
        """z [batch, pos, H, d_head] from the (patched) queries, keys and values [3, batch, pos, H,
        d_head], through the attention module's own functions: rotary, scale, soft-cap, causal or
        local mask, and the repeat of shared key/value heads."""
        attn, n_kv = self.attns[layer], self.graph.n_kv_heads
        queries, keys, values = qkv[0], qkv[1][:, :, :n_kv], qkv[2][:, :, :n_kv]
        if self.rotary:
            queries, keys = attn.apply_rotary(queries), attn.apply_rotary(keys)
        scores = attn.calculate_attention_scores(queries, keys)
        if self.causal:
            scores = attn.apply_causal_mask(scores)
        softmax = self.softmaxes[layer]
        pattern = F.softmax(scores, dim=-1) if softmax is None else softmax(scores)
        pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)
        return attn.calculate_z_scores(values, pattern)

    def head_results(self, layer: int, z: torch.Tensor, heads: torch.Tensor | None = None) -> torch.Tensor:
        """Each head's output [H, batch, pos, d_model] (one slab per head, b_O not included), or
        only ``heads``' [len(heads), batch, pos, d_model]."""
        if heads is None:
            return torch.einsum("bqhe,hed->hbqd", z, self.attns[layer].W_O)
        return torch.einsum("bqhe,hed->hbqd", z[:, :, heads], self.attns[layer].W_O[heads])

    def head_result_diffs(self, layer: int, z: torch.Tensor, heads: torch.Tensor, ablated: torch.Tensor,
                          out: torch.Tensor) -> None:
        """``out[h] = head_results(layer, z)[h] - ablated[h]`` for each of ``heads`` (``out``: [H,
        batch, pos, d_model], ``ablated``: [H, batch | 1, pos, d_model]), one product per head
        straight into its slab: no [len(heads), batch, pos, d_model] temporaries."""
        W_O = self.attns[layer].W_O
        batch, n_pos, _, d_head = z.shape
        z = z.reshape(batch * n_pos, -1)
        for head in heads.tolist():
            slab = out[head].view(batch * n_pos, -1)
            zh = z[:, head * d_head:(head + 1) * d_head]
            if ablated.shape[1] == batch:
                torch.addmm(ablated[head].reshape(batch * n_pos, -1), zh, W_O[head], beta=-1, out=slab)
            else:  # an ablation shared by every prompt (zero, mean): broadcast it
                torch.mm(zh, W_O[head], out=slab)
                out[head].sub_(ablated[head])

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """The model's unembedding, computed as TransformerLens does (``F.linear`` on W_U's
        transpose, so the logits match it bit for bit) but with that transpose made contiguous
        once: TransformerLens 3.9 copies it on every call, 150 MB for GPT-2's vocabulary."""
        ln_final = getattr(self.model, "ln_final", None)
        if self._unembed_weight is None:
            self._unembed_weight = self.model.unembed.W_U.T.contiguous()
        logits = F.linear(ln_final(x) if ln_final is not None else x, self._unembed_weight, self.model.unembed.b_U)
        cap = self.soft_cap  # Gemma's soft-cap, as TransformerLens applies it
        return cap * torch.tanh(logits / cap) if cap is not None and cap > 0 else logits
