"""Pruning a circuit to the edges on some path from the input to the output.

A circuit kept by a score threshold or a top-n cut may hold edges that cannot matter: one whose
receiver feeds nothing kept (its effect is ablated further on) or whose sender reads nothing kept
(its value is computed from ablated inputs only).  MIB's circuit track (and the ``eap`` library's
``Graph.prune``) evaluates a circuit only after removing them, and counts the edges that are left.

Here the graph is read as a directed graph on its node names: a sender (``embed``, ``a3.h0``,
``m2``) and a receiver (``a3.h0<q>``, ``m2``, ``a3.h0`` in the heads graph, ``resid_post``) are joined
by every kept edge; a receiver and the sender of the same name are one node (an MLP's input and its
output, a head's input and output in the heads graph); the qkv graph's edge ``a3.h0<q>`` joins a
head's query input to the head; under grouped-query attention a key/value head (``a3.kv0``) feeds
the query heads that share it.  A kept edge survives when its sender is reachable from an embedding
sender and its receiver reaches ``resid_post``.  In the node graph every kept node reads every kept
node before it and writes ``resid_post``: a kept node survives when an embedding node is kept.

What pruning does to the patched model (see ``engine``): removing an edge whose receiver feeds
nothing kept changes nothing under any ablation.  Removing an edge whose sender reads nothing kept
changes nothing under interchange ablation (``corrupted``: the sender, reading only ablated inputs,
computes its ablated value); under zero and mean ablation such a sender computes what its biases
make of ablated inputs, which is not its ablated value, so there the pruned circuit is the one MIB
evaluates, not a relabelling of the unpruned one.
"""

from __future__ import annotations

import weakref

import torch

from .graph import Graph, head_name, kv_head_name

_PATHS: "weakref.WeakKeyDictionary[Graph, _Paths]" = weakref.WeakKeyDictionary()


class _Paths:
    """Integer form of a graph's node-and-edge structure (built once per graph)."""

    def __init__(self, graph: Graph):
        names: dict[str, int] = {}

        def node(name: str) -> int:
            return names.setdefault(name, len(names))

        self.src = torch.tensor([node(e.sender) for e in graph.edges], dtype=torch.long)
        self.dst = torch.tensor([node(e.receiver) for e in graph.edges], dtype=torch.long)
        links = []  # (from, to): a key/value head feeds the query heads sharing it
        if graph.arch.grouped:
            group = graph.n_heads // graph.n_kv_heads
            for layer in range(graph.n_layers):
                for kv in range(graph.n_kv_heads):
                    for h in range(kv * group, (kv + 1) * group):
                        links.append((node(kv_head_name(layer, kv)), node(head_name(layer, h))))
        self.link_src = torch.tensor([a for a, _ in links], dtype=torch.long)
        self.link_dst = torch.tensor([b for _, b in links], dtype=torch.long)
        self.sources = torch.tensor([node(n) for n in graph.embed_names], dtype=torch.long)
        self.sink = node("resid_post")
        self.n_nodes = len(names)
        self.nodes_graph = graph.granularity == "nodes"
        self.embed_edges = torch.tensor([e.sender in graph.embed_names for e in graph.edges])


def _paths(graph: Graph) -> _Paths:
    paths = _PATHS.get(graph)
    if paths is None:
        paths = _PATHS[graph] = _Paths(graph)
    return paths


def prune(graph: Graph, kept: torch.Tensor) -> torch.Tensor:
    """The edges of ``kept`` (bool [n_edges]) that lie on a path from an embedding to the output."""
    kept = kept.detach().cpu().bool()
    if kept.shape != (graph.n_edges,):
        raise ValueError(f"mask has shape {tuple(kept.shape)}, graph has {graph.n_edges} edges")
    p = _paths(graph)
    if p.nodes_graph:
        return kept & bool((kept & p.embed_edges).any())

    forward = _reached(p.n_nodes, p.sources, kept, p.src, p.dst, p.link_src, p.link_dst)
    backward = _reached(p.n_nodes, p.sink, kept, p.dst, p.src, p.link_dst, p.link_src)
    return kept & forward[p.src] & backward[p.dst]


def _reached(n_nodes: int, start, kept: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
             link_src: torch.Tensor, link_dst: torch.Tensor) -> torch.Tensor:
    """Nodes reached from ``start`` along kept edges ``src -> dst`` and the always-present links
    ``link_src -> link_dst`` (swap both pairs to walk backwards): one vectorised pass per step of depth."""
    reached = torch.zeros(n_nodes, dtype=torch.bool)
    reached[start] = True
    while True:
        step = reached.clone()
        step[dst[kept & reached[src]]] = True
        step[link_dst[step[link_src]]] = True
        if torch.equal(step, reached):
            return reached
        reached = step
