"""The slow, obvious EAP: TransformerLens hooks, activation differences times gradients.

Written from the definition, not from the engine: one hooked forward on the clean prompts (and one
on the corrupted ones for the ablated values) records every sender's value and every head's q/k/v;
a zero "probe" added at every receiver input (each head's split q/k/v input, each MLP's input, the
final residual) and at every q/k/v makes its gradient ``dL/d input``.  An edge ``s -> r`` then scores

    (ablated_s - value_s) . dL/d input_r        summed over prompts, positions and dims

and a q/k/v edge ``a1.h0<q> -> a1.h0`` scores ``(ablated q - q) . dL/dq``.  On the coarser graphs an
edge is a set of these (a head's edge: its q, k and v inputs; a node: every edge leaving it), so its
first-order score is their sum.  The tests hold ``methods.attribution`` to this.

Gemma-2's post-norms: a receiver reads head h of layer l through ``ln1_post(sum of the layer's
heads + b_O)`` (see ``reference.py``), so there the head's first-order score is
``(ablated_h - value_h) . J^T dL/d input_r``, J the Jacobian of ``ln1_post`` at the layer's sum on the
clean prompts (a vector-Jacobian product per receiver and layer).  Grouped-query attention's shared
key/value inputs are not covered here.
"""

from __future__ import annotations

import re
from typing import Callable

import torch

from ..core.graph import Graph
from .reference import hooked_receivers, sender_value

# A model view (models/view): a TransformerLens 3 HookedTransformer, or a TransformerLens 4
# TransformerBridge wrapped as one.
ModelView = object

_HEAD_INPUT = re.compile(r"^a(\d+)\.h(\d+)<([qkv])>$")
_MLP = re.compile(r"^m(\d+)$")
_HEAD = re.compile(r"^a(\d+)\.h(\d+)$")


def _activations(model: ModelView, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    _, cache = model.run_with_cache(tokens)
    return {name: act.detach() for name, act in cache.items()}


def _zeroed_senders_activations(model: ModelView, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Activations of a run in which every sender writes zero (embeddings, head results, MLP outputs)."""
    zero = lambda act, hook: torch.zeros_like(act)  # noqa: E731
    names = ["hook_embed", "hook_pos_embed"] + [f"blocks.{l}.attn.hook_result" for l in range(model.cfg.n_layers)]
    names += [] if model.cfg.attn_only else [f"blocks.{l}.hook_mlp_out" for l in range(model.cfg.n_layers)]
    names = [n for n in names if n in model.hook_dict]  # rotary models have no hook_pos_embed
    with model.hooks(fwd_hooks=[(n, zero) for n in names]):
        return _activations(model, tokens)


def _value(name: str, acts: dict[str, torch.Tensor]) -> torch.Tensor:
    """A sender's [batch, pos, d_model] output, or a head input's [batch, pos, d_head] q/k/v."""
    if m := _HEAD_INPUT.match(name):
        return acts[f"blocks.{m[1]}.attn.hook_{m[3]}"][:, :, int(m[2])]
    return sender_value(name, acts)  # the other senders as the hook reference reads them


def _ablated(name: str, kind: str, clean: dict, corrupted: dict | None) -> torch.Tensor:
    value = _value(name, clean)
    if kind == "zero" and _HEAD_INPUT.match(name):  # the q/k/v of a run with every sender zeroed
        return _value(name, corrupted).expand_as(value)
    if kind == "zero":
        return torch.zeros_like(value)
    other = _value(name, corrupted)
    if kind == "corrupted":
        return other
    if kind == "mean":
        return other.mean(0, keepdim=True).expand_as(value)
    if kind == "mean_all":
        return other.mean((0, 1), keepdim=True).expand_as(value)
    raise ValueError(kind)


def _receiver_hook(receiver: str, n_layers: int) -> tuple[str, int | None]:
    """The hook whose activation is the receiver's input (and the head index into it)."""
    if receiver == "resid_post":
        return f"blocks.{n_layers - 1}.hook_resid_post", None
    if m := _HEAD_INPUT.match(receiver):
        return f"blocks.{m[1]}.hook_{m[3]}_input", int(m[2])
    if m := _MLP.match(receiver):
        return f"blocks.{m[1]}.hook_mlp_in", None
    raise KeyError(receiver)


def eap_reference(model: ModelView, graph: Graph, clean: torch.Tensor, corrupted: torch.Tensor,
                  positions: torch.Tensor, corruption: str,
                  loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Signed EAP scores [n_edges] (float64) of ``graph``'s edges; ``loss_fn`` maps the logits at
    ``positions`` [batch, k, vocab] to the scalar loss."""
    with hooked_receivers(model):
        acts = _activations(model, clean)
        other = _zeroed_senders_activations(model, clean) if corruption == "zero" else _activations(model, corrupted)
        probes: dict[str, torch.Tensor] = {}

        def probe(act, hook):
            probes[hook.name] = torch.zeros_like(act, requires_grad=True)
            return act + probes[hook.name]

        names = [f"blocks.{graph.n_layers - 1}.hook_resid_post"]
        for l in range(graph.n_layers):
            names += [f"blocks.{l}.hook_{w}_input" for w in "qkv"] + [f"blocks.{l}.attn.hook_{w}" for w in "qkv"]
            if graph.arch.has_mlps:
                names.append(f"blocks.{l}.hook_mlp_in")
        with torch.enable_grad():
            logits = model.run_with_hooks(clean, fwd_hooks=[(n, probe) for n in names])
            index = positions.view(*positions.shape, 1).expand(-1, -1, logits.shape[-1])
            loss_fn(logits.gather(1, index)).backward()

    fine = Graph(graph.arch, "qkv")
    fine_scores: dict[str, float] = {}
    for edge in fine.edges:
        difference = _ablated(edge.sender, corruption, acts, other) - _value(edge.sender, acts)
        if m := _HEAD_INPUT.match(edge.sender):  # the q/k/v edge into its own head
            grad = probes[f"blocks.{m[1]}.attn.hook_{m[3]}"].grad[:, :, int(m[2])]
        else:
            hook, head = _receiver_hook(edge.receiver, graph.n_layers)
            grad = probes[hook].grad if head is None else probes[hook].grad[:, :, head]
            if model.cfg.use_normalization_before_and_after and (h := _HEAD.match(edge.sender)):
                grad = _through_post_norm(model, int(h[1]), acts, grad)
        fine_scores[edge.name] = float((difference.double() * grad.double()).sum())
    return _coarsen(fine, fine_scores, graph)


def _through_post_norm(model: ModelView, layer: int, acts: dict, grad: torch.Tensor) -> torch.Tensor:
    """J^T grad, J the Jacobian of layer ``layer``'s ln1_post at the sum of its heads and b_O."""
    summed = acts[f"blocks.{layer}.attn.hook_result"].sum(2) + model.blocks[layer].attn.b_O
    with torch.enable_grad():
        return torch.autograd.functional.vjp(model.blocks[layer].ln1_post, summed, grad)[1]


def _coarsen(fine: Graph, scores: dict[str, float], graph: Graph) -> torch.Tensor:
    """The first-order score of each of ``graph``'s edges: the sum over the qkv edges it stands for."""
    out = torch.zeros(graph.n_edges, dtype=torch.float64)
    for edge in fine.edges:
        if graph.granularity == "qkv":
            owner = edge.name
        elif _HEAD_INPUT.match(edge.sender):
            continue  # no q/k/v edges on the coarser graphs
        else:
            head_input = _HEAD_INPUT.match(edge.receiver)
            receiver = f"a{head_input[1]}.h{head_input[2]}" if head_input else edge.receiver
            owner = edge.sender if graph.granularity == "nodes" else f"{edge.sender}->{receiver}"
        out[graph.edge_index[owner]] += scores[edge.name]
    return out
