"""The slow, obvious patched forward: TransformerLens hooks, one full forward, Python loops over edges.

It shares nothing with ``engine.py`` but the edge names: it reads each edge's sender and receiver
from its name, records sender values with hooks as the forward passes them, and subtracts, at each
receiver's hook, ``(1 - m) * (value - ablated)`` for every edge into it.  It exists so the tests can
hold the fast engine to it, and as the baseline of the speed benchmark.

Today's blocks need little of their own here: TransformerLens applies rotary positions, soft-caps,
norms and gated MLPs after the hooks patched below.  Gemma-2's post-norms
(``use_normalization_before_and_after``) normalise the sum of a layer's heads before it enters the
residual stream, so there a receiver that removes head edges of layer l reads, in place of the
layer's ``hook_attn_out``, ``ln1_post`` applied to its own mix of the layer's ``hook_result``
values (kept: this run's, removed: the ablated ones) plus ``b_O``; an MLP's ``hook_mlp_out`` is
already post-normed and stays an ordinary sender.  Under grouped-query attention its
``hook_k_input``/``hook_v_input``/``hook_k``/``hook_v`` carry one slot per key/value head, which is
where the ``a3.kv0<k>`` receivers and q/k/v edges land; in a parallel block ``hook_mlp_in`` is the
block's input, and an MLP does not read its own layer's heads.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch

from ..core.graph import EdgeMask, Graph

# A model view (models/view): a TransformerLens 3 HookedTransformer, or a TransformerLens 4
# TransformerBridge wrapped as one.
ModelView = object

_HEAD = re.compile(r"^a(\d+)\.h(\d+)$")
_HEAD_INPUT = re.compile(r"^a(\d+)\.h(\d+)<([qkv])>$")
# grouped-query attention: a key/value head shared by several query heads, and its k/v inputs
_KV_HEAD = re.compile(r"^a(\d+)\.kv(\d+)$")
_KV_INPUT = re.compile(r"^a(\d+)\.kv(\d+)<([kv])>$")
_MLP = re.compile(r"^m(\d+)$")


@contextmanager
def hooked_receivers(model: ModelView):
    """Switch on the per-head input and output hooks the reference needs, restoring them after."""
    cfg = model.cfg
    saved = (cfg.use_split_qkv_input, cfg.use_attn_result, cfg.use_hook_mlp_in)
    model.set_use_split_qkv_input(True)
    model.set_use_attn_result(True)
    if not cfg.attn_only:
        model.set_use_hook_mlp_in(True)
    try:
        yield model
    finally:
        model.set_use_split_qkv_input(saved[0])
        model.set_use_attn_result(saved[1])
        if not cfg.attn_only:
            model.set_use_hook_mlp_in(saved[2])


def sender_value(name: str, acts: dict[str, torch.Tensor]) -> torch.Tensor:
    """A sender's [batch, pos, d_model] value from hook activations."""
    if name == "embed":  # what the residual stream starts with (a shortformer: no positions)
        return acts["blocks.0.hook_resid_pre"]
    if name == "tok_embed":
        return acts["hook_embed"]
    if name == "pos_embed":
        return acts["hook_pos_embed"]
    if m := _HEAD.match(name):
        return acts[f"blocks.{m[1]}.attn.hook_result"][:, :, int(m[2])]
    if m := _MLP.match(name):
        return acts[f"blocks.{m[1]}.hook_mlp_out"]
    raise KeyError(name)


def _sender_hooks(model: ModelView) -> list[str]:
    names = ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre"]
    for l in range(model.cfg.n_layers):
        names.append(f"blocks.{l}.attn.hook_result")
        if not model.cfg.attn_only:
            names.append(f"blocks.{l}.hook_mlp_out")
    return [name for name in names if name in model.hook_dict]  # rotary models have no hook_pos_embed


def _qkv_hooks(model: ModelView) -> list[str]:
    return [f"blocks.{l}.attn.hook_{w}" for l in range(model.cfg.n_layers) for w in "qkv"]


@torch.no_grad()
def reference_ablation(model: ModelView, corrupted: torch.Tensor, kind: str,
                       shuffle_positions: bool = False) -> dict[str, torch.Tensor]:
    """Hook activations on the corrupted prompts (or their per-position mean, or their mean), or,
    for zero ablation, of one forward in which every sender hook outputs zeros.  With
    ``shuffle_positions`` the corrupted run's ``hook_pos_embed`` is permuted over positions: the
    reference implementation's recipe, ``torch.manual_seed(49)`` then ``torch.randperm``."""
    if kind == "zero":
        return _every_sender_zeroed(model, corrupted)
    hooks = []
    if shuffle_positions:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(49)
            order = torch.randperm(corrupted.shape[1])
        hooks.append(("hook_pos_embed", lambda value, hook: value[:, order]))
    with hooked_receivers(model), model.hooks(fwd_hooks=hooks):
        names = set(_sender_hooks(model) + _qkv_hooks(model))
        _, cache = model.run_with_cache(corrupted, names_filter=lambda n: n in names)
    acts = {name: cache[name] for name in names}
    if kind == "mean":
        return {k: v.mean(0, keepdim=True).expand_as(v) for k, v in acts.items()}
    if kind == "mean_all":
        return {k: v.mean((0, 1), keepdim=True).expand_as(v) for k, v in acts.items()}
    if kind != "corrupted":
        raise ValueError(f"unknown corruption {kind!r}")
    return acts


def _every_sender_zeroed(model: ModelView, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every sender hook and hook_q/k/v of a forward whose senders all output zeros (a shortformer's or
    rotary model's positions are no sender: they still reach the queries and keys)."""
    zeroed = ["hook_embed"] + [n for n in _sender_hooks(model) if n.startswith("blocks.") and n != "blocks.0.hook_resid_pre"]
    if model.cfg.positional_embedding_type not in ("shortformer", "rotary"):
        zeroed.append("hook_pos_embed")
    acts: dict[str, torch.Tensor] = {}

    def zero(value, hook):
        acts[hook.name] = torch.zeros_like(value)
        return acts[hook.name]

    def save(value, hook):
        acts[hook.name] = value.clone()

    hooks = [(name, zero) for name in zeroed] + [(name, save) for name in ["blocks.0.hook_resid_pre", *_qkv_hooks(model)]]
    with hooked_receivers(model):
        model.run_with_hooks(tokens, fwd_hooks=hooks)
    return acts


def _grouped(model: ModelView) -> bool:
    return model.cfg.n_key_value_heads not in (None, model.cfg.n_heads)


def _receiver_sites(model: ModelView, graph: Graph, sender: str, receiver: str) -> list[tuple[str, int | None]]:
    """Where an edge enters the model: (hook name, head index or None) pairs."""
    L = graph.n_layers
    if graph.granularity == "nodes":  # a node feeds every receiver after it
        return [site for r in graph.receivers for site in _receiver_sites_qkv(r, L)
                if sender in _visible_senders(model, graph, r)]
    if m := _HEAD.match(receiver):  # heads graph: one edge into q, k and v alike (GQA: q only)
        return [(f"blocks.{m[1]}.hook_{w}_input", int(m[2])) for w in ("q" if _grouped(model) else "qkv")]
    if m := _KV_HEAD.match(receiver):  # heads graph under GQA: one edge into a key/value head's k and v
        return [(f"blocks.{m[1]}.hook_{w}_input", int(m[2])) for w in "kv"]
    return _receiver_sites_qkv(receiver, L)


def _receiver_sites_qkv(receiver: str, n_layers: int) -> list[tuple[str, int | None]]:
    if receiver == "resid_post":
        return [(f"blocks.{n_layers - 1}.hook_resid_post", None)]
    if m := _HEAD_INPUT.match(receiver) or _KV_INPUT.match(receiver):
        return [(f"blocks.{m[1]}.hook_{m[3]}_input", int(m[2]))]
    if m := _MLP.match(receiver):
        return [(f"blocks.{m[1]}.hook_mlp_in", None)]
    raise KeyError(receiver)


def _visible_senders(model: ModelView, graph: Graph, receiver: str) -> set[str]:
    """Senders written before ``receiver`` reads, from layer numbers alone (a parallel block's MLP
    reads what its heads read)."""
    def sender_layer(s: str) -> float:
        if s in ("embed", "tok_embed", "pos_embed"):
            return -1
        if m := _HEAD.match(s):
            return int(m[1])
        return int(_MLP.match(s)[1]) + 0.5  # an MLP writes after its layer's heads
    if receiver == "resid_post":
        limit = float("inf")
    elif m := _HEAD_INPUT.match(receiver) or _KV_INPUT.match(receiver):
        limit = int(m[1]) - 0.25
    else:
        limit = int(_MLP.match(receiver)[1]) + (-0.25 if model.cfg.parallel_attn_mlp else 0.25)
    return {s for s in graph.senders if sender_layer(s) < limit}


def reference_logits(model: ModelView, graph: Graph, clean: torch.Tensor,
                     ablated: dict[str, torch.Tensor], mask: EdgeMask) -> torch.Tensor:
    """Logits of the patched model on ``clean``, one plain forward with hooks."""
    removed: dict[str, list[tuple[str, int | None, float]]] = {}  # hook -> (sender, head, 1 - m)
    qkv_patches: dict[str, list[tuple[int, float]]] = {}  # hook_q etc -> (head, m)
    values = mask.values.double().tolist()
    for edge, m in zip(graph.edges, values):
        if m == 1.0:
            continue
        h = _HEAD_INPUT.match(edge.sender) or _KV_INPUT.match(edge.sender)
        if h and (_HEAD.match(edge.receiver) or _KV_HEAD.match(edge.receiver)):  # a q/k/v edge
            qkv_patches.setdefault(f"blocks.{h[1]}.attn.hook_{h[3]}", []).append((int(h[2]), m))
            continue
        for hook, head in _receiver_sites(model, graph, edge.sender, edge.receiver):
            removed.setdefault(hook, []).append((edge.sender, head, 1.0 - m))

    current: dict[str, torch.Tensor] = {}

    def record(value, hook):
        current[hook.name] = value
        return value

    post_norm = model.cfg.use_normalization_before_and_after

    def attention_output_change(layer: int, amounts: dict[int, float]) -> torch.Tensor:
        """Post-norms: layer ``layer``'s attention output in this run minus the one this receiver
        reads, ln1_post(its own mix of the layer's heads, plus b_O)."""
        heads = current[f"blocks.{layer}.attn.hook_result"]  # [batch, pos, head, d_model]
        ablated_heads = ablated[f"blocks.{layer}.attn.hook_result"]
        mixed = sum(heads[:, :, h] - amounts.get(h, 0.0) * (heads[:, :, h] - ablated_heads[:, :, h])
                    for h in range(heads.shape[2])) + model.blocks[layer].attn.b_O
        return current[f"blocks.{layer}.hook_attn_out"] - model.blocks[layer].ln1_post(mixed)

    def patch_receiver(value, hook):
        value = value.clone()
        for head in {head for _, head, _ in removed[hook.name]}:
            delta, post_normed = 0.0, {}
            for sender, at, amount in removed[hook.name]:
                if at != head:
                    continue
                if post_norm and (m := _HEAD.match(sender)):  # the heads of a layer are normalised together
                    amounts = post_normed.setdefault(int(m[1]), {})
                    amounts[int(m[2])] = amounts.get(int(m[2]), 0.0) + amount
                    continue
                delta = delta + amount * (sender_value(sender, current) - sender_value(sender, ablated))
            for layer, amounts in post_normed.items():
                delta = delta + attention_output_change(layer, amounts)
            if head is None:
                value = value - delta
            else:
                value[:, :, head] = value[:, :, head] - delta
        return value

    def patch_qkv(value, hook):
        value = value.clone()
        for head, m in qkv_patches[hook.name]:
            value[:, :, head] = m * value[:, :, head] + (1 - m) * ablated[hook.name][:, :, head]
        return value

    hooks = [(name, record) for name in _sender_hooks(model)]
    if post_norm:
        hooks += [(f"blocks.{l}.hook_attn_out", record) for l in range(model.cfg.n_layers)]
    hooks += [(name, patch_receiver) for name in removed]
    hooks += [(name, patch_qkv) for name in qkv_patches]
    with hooked_receivers(model):
        return model.run_with_hooks(clean, fwd_hooks=hooks)
