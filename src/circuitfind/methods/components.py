"""Model components, the unit that Subnetwork Probing gates and HISP ranks, and how a set of kept
components becomes a circuit of the edge graph.

Components (Conmy et al. 2023, appendix on SP and HISP):
    qkv graph       each head's query, key and value input (``a1.h0<q>``) and each MLP's output (``m1``);
    heads / nodes   each head's output (``a1.h0``) and each MLP's output: a coarser graph has no edge
                    that touches only a head's query, so the head is gated as a whole.

A component's gate is the mask value of a set of edges, which is how the patching engine interpolates
it: gating ``a1.h0<q>`` is the float mask of the edge ``a1.h0<q>`` (the engine mixes the clean and the
ablated query), gating MLP ``m1`` is the same value on every outgoing edge of ``m1`` (every reader sees
``z * clean + (1 - z) * ablated``), and likewise for a head's output in the coarser graphs.

A set of kept components becomes a circuit by keeping every edge whose two endpoints are alive:
the embeddings and ``resid_post`` always are; a head input or MLP when its component is kept; in
the qkv graph a head when any of its q, k, v inputs is kept.  So a removed q/k/v gate removes that
input's edges, a head with all three removed loses its output edges, and a removed MLP loses its
input and output edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.graph import QKV, EdgeMask, Graph, head_name

@dataclass(frozen=True)
class Component:
    name: str  # a node name of the graph: "a1.h0<q>", "a1.h0" or "m1"
    kind: str  # "q", "k", "v" (a head input), "head" (a head's output) or "mlp"
    layer: int
    head: int | None  # None for an MLP
    edges: tuple[int, ...]  # the edges whose mask value is this component's gate


class Components:
    """The components of ``graph`` in layer order (per layer: q, k, v of every head, or every head's
    output, then the MLP), with the maps between component values and edges."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.per_input = graph.granularity == "qkv"
        items: list[Component] = []
        for layer in range(graph.n_layers):
            if self.per_input:
                for which in QKV:
                    for h in range(graph.n_heads_reading(which)):  # GQA: k and v per key/value head
                        name = graph.input_name(layer, h, which)
                        items.append(Component(name, which, layer, h, (graph.edge_index[name],)))
            else:
                for h in range(graph.n_heads):
                    name = head_name(layer, h)
                    items.append(Component(name, "head", layer, h, tuple(graph.outgoing[name])))
            if graph.arch.has_mlps:
                name = f"m{layer}"
                items.append(Component(name, "mlp", layer, None, tuple(graph.outgoing[name])))
        self.items: tuple[Component, ...] = tuple(items)
        self.index = {c.name: i for i, c in enumerate(items)}
        edges = [e for c in items for e in c.edges]
        owners = [i for i, c in enumerate(items) for _ in c.edges]
        if len(set(edges)) != len(edges):  # one edge under two gates would have no single value
            raise AssertionError("components share an edge")
        self._edges = torch.tensor(edges, dtype=torch.long)
        self._owners = torch.tensor(owners, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.items]

    def layers(self) -> list[list[int]]:
        """Component indices of each layer (HISP normalises its scores within a layer)."""
        out: list[list[int]] = [[] for _ in range(self.graph.n_layers)]
        for i, c in enumerate(self.items):
            out[c.layer].append(i)
        return out

    # ---- component values -> edge values -------------------------------------------------------
    def edge_mask_values(self, gates: torch.Tensor) -> torch.Tensor:
        """Per-edge mask values with every component's edges set to its gate (differentiable in
        ``gates``); edges of no component (embedding -> receiver, ...) stay at 1."""
        ones = torch.ones(self.graph.n_edges, dtype=gates.dtype, device=gates.device)
        return ones.index_put((self._edges.to(gates.device),), gates[self._owners.to(gates.device)])

    def _node_values(self, values: torch.Tensor) -> dict[str, float]:
        """A value for every gated node name: a component's own value and, in the qkv graph, a
        head's the largest of its inputs' (the head lives while any input does)."""
        out = {c.name: float(v) for c, v in zip(self.items, values.tolist())}
        if self.per_input:
            g = self.graph
            group = g.n_heads // g.n_kv_heads  # GQA: head h reads key/value head h // group
            for layer in range(g.n_layers):
                for h in range(g.n_heads):
                    inputs = [out[g.input_name(layer, h if w == "q" else h // group, w)] for w in QKV]
                    out[head_name(layer, h)] = max(inputs)
                    if g.arch.grouped:
                        out[g.input_owner(layer, h // group, "k")] = max(inputs[1:])
        return out

    def _edge_values(self, node_values: dict[str, float], ungated: float) -> list[float]:
        return [min(node_values.get(e.sender, ungated), node_values.get(e.receiver, ungated))
                for e in self.graph.edges]

    def circuit(self, keep: torch.Tensor) -> EdgeMask:
        """Every edge between alive nodes, given which components are kept ([n_components] bool)."""
        if keep.shape != (len(self),):
            raise ValueError(f"expected {len(self)} component flags, got shape {tuple(keep.shape)}")
        alive = self._node_values(keep.detach().cpu().double())
        kept = torch.tensor(self._edge_values(alive, 1.0), dtype=torch.float64) > 0.5
        return EdgeMask(self.graph, kept)

    def edge_scores(self, scores: torch.Tensor, ungated: float = math.inf) -> torch.Tensor:
        """Per-edge scores from per-component scores: the smaller of the two endpoints' (a head in
        the qkv graph scores its best input), so that thresholding the edge scores at a component
        threshold gives the same circuit as ``circuit``."""
        nodes = self._node_values(scores.detach().cpu().double())
        return torch.tensor(self._edge_values(nodes, ungated), dtype=torch.float64)
