"""Canonical circuits read off a compiled tracr model's weights, not found by any discovery method.

tracr lays the residual stream out as a sum of labelled subspaces, one per RASP variable value, and
every component reads and writes only its variables' subspaces.  So whether a receiver can see a
sender is a property of the weights alone:

    sender s writes the row space of its output map  S_s  ([*, d_model]):
        tok_embed: W_E,  pos_embed: W_pos,  head h: W_V[h] W_O[h] (its OV map) and b_O,  MLP: W_out and b_out;
    receiver r reads through its input map  R_r  ([d_model, *]):
        query of h: W_Q[h] W_K[h]^T,  key of h: W_K[h] W_Q[h]^T   (what the attention score sees),
        value of h: W_V[h] W_O[h],  MLP input: W_in,  resid_post: W_U.

The edge s -> r is *connected* when the product S_s R_r has a non-zero entry (above ``atol``): r
reads a direction s writes.  An edge is canonical when it is connected and both ends lie on a path
to the output: walking the receivers from the output back, a component is *live* when it has a
connected edge into a live receiver (``resid_post`` is live), and its inputs then become live.  A
live head's own edge from its q, k or v input (``a1.h0<q>``) is canonical when that input has a
canonical incoming edge.

Why this suffices (tested in tests/test_tracr_suite.py): every edge left out either feeds a
receiver that is not live, whose component feeds only receivers that are not live, or carries a
value in the null space of what its receiver reads; zero-ablating all of them at once therefore
leaves every live component's input, and so the output, unchanged.
"""

from __future__ import annotations

import torch

from ..core.graph import Graph

# A model view (models/view): a TransformerLens 3 HookedTransformer, or a TransformerLens 4
# TransformerBridge wrapped as one.
ModelView = object

# tracr's weights are exact small numbers (0, 1, a few hundreds in selector-width MLPs) and
# unrelated subspaces are disjoint, so an unconnected product is exactly 0 in float32.
DEFAULT_ATOL = 1e-6


def _sender_maps(model: ModelView, graph: Graph) -> dict[str, torch.Tensor]:
    """Each sender's output map [*, d_model] (bias rows included)."""
    maps: dict[str, torch.Tensor] = {"tok_embed": model.W_E, "pos_embed": model.W_pos}
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        for head in range(graph.n_heads):
            ov = attn.W_V[head] @ attn.W_O[head]
            # b_O is shared by the layer's heads: each is charged with it.
            maps[f"a{layer}.h{head}"] = torch.cat([ov, attn.b_O[None]])
        if graph.arch.has_mlps:
            maps[f"m{layer}"] = torch.cat([block.mlp.W_out, block.mlp.b_out[None]])
    return maps


def _receiver_maps(model: ModelView, graph: Graph) -> dict[str, torch.Tensor]:
    """Each receiver's input map [d_model, *]."""
    maps: dict[str, torch.Tensor] = {"resid_post": model.W_U}
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        for head in range(graph.n_heads):
            W_Q, W_K = attn.W_Q[head], attn.W_K[head]
            maps[f"a{layer}.h{head}<q>"] = W_Q @ W_K.T
            maps[f"a{layer}.h{head}<k>"] = W_K @ W_Q.T
            maps[f"a{layer}.h{head}<v>"] = attn.W_V[head] @ attn.W_O[head]
        if graph.arch.has_mlps:
            maps[f"m{layer}"] = block.mlp.W_in
    return maps


def connected_edges(model: ModelView, graph: Graph, atol: float = DEFAULT_ATOL) -> set[str]:
    """Edges ``sender->receiver`` of ``graph`` whose receiver reads a direction the sender writes."""
    senders, receivers = _sender_maps(model, graph), _receiver_maps(model, graph)
    found = set()
    for edge in graph.edges:
        if "->" not in edge.name:
            continue
        product = senders[edge.sender].double() @ receivers[edge.receiver].double()
        if product.abs().max() > atol:
            found.add(edge.name)
    return found


def _head_of(receiver: str) -> str | None:
    """``a1.h0`` for ``a1.h0<q>``; None for an MLP or resid_post."""
    return receiver.split("<")[0] if receiver.endswith(">") else None


def derive_canonical(model: ModelView, graph: Graph, atol: float = DEFAULT_ATOL) -> set[str]:
    """The program's ground-truth circuit as edge names of the qkv ``graph`` (see the module doc)."""
    if graph.granularity != "qkv" or not graph.arch.split_embed:
        raise ValueError("ground-truth circuits are derived on the qkv graph of a tracr model (split embeddings)")
    connected = connected_edges(model, graph, atol)
    incoming: dict[str, list[str]] = {}
    for edge in graph.edges:
        if edge.name in connected:
            incoming.setdefault(edge.receiver, []).append(edge.name)
    # graph.receivers is in forward order: walked backwards, every receiver a component feeds is
    # decided (live or not) before that component's own inputs are looked at.
    live_receivers = {"resid_post"}
    canonical: set[str] = set()
    for receiver in reversed(graph.receivers):
        if receiver not in live_receivers:
            continue
        for name in incoming.get(receiver, []):
            canonical.add(name)
            sender = name.split("->")[0]
            if sender in graph.embed_names:
                continue
            if sender.startswith("a"):  # a head: its query, key and value inputs
                live_receivers.update(f"{sender}<{which}>" for which in "qkv")
            else:
                live_receivers.add(sender)
    # A live head input that reads something canonical keeps its edge into the head.
    canonical |= {receiver for receiver in live_receivers
                  if _head_of(receiver) is not None and incoming.get(receiver)}
    return canonical


def inert_edges(canonical: set[str], graph: Graph, changed) -> list[str]:
    """The canonical edges whose removal alone leaves the output unchanged, per ``changed(mask)``
    (True when the circuit ``mask`` changes the output on some prompt)."""
    inert = []
    full = graph.full_mask()
    for name in sorted(canonical):
        values = full.values.clone()
        values[graph.edge_index[name]] = 0
        if not changed(type(full)(graph, values)):
            inert.append(name)
    return inert
