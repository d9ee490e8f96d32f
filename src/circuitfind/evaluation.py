"""Scoring circuits against a canonical one: TPR/FPR at edge and node level.

Consumes only masks and the graph: any method's output can be evaluated the same way."""

from __future__ import annotations

import re

import torch

from .graph import Architecture, EdgeMask, Graph
from .tasks.base import Task

_QKV_INPUT = re.compile(r"^(.*)<[qkv]>$")


def project_edges(names: set[str], graph: Graph) -> set[str]:
    """Project qkv-graph edge names onto ``graph``'s granularity: a head-level edge is in the
    circuit when any of its q/k/v edges is; a node when it is an endpoint of any edge."""
    if graph.granularity == "qkv":
        return set(names)
    out: set[str] = set()
    for name in names:
        if "->" not in name:  # a head's own q/k/v edge: no counterpart in coarser graphs
            sender = receiver = _QKV_INPUT.match(name)[1]
        else:
            sender, receiver = name.split("->")
            receiver = graph.component(receiver)
        if graph.granularity == "heads":
            if sender != receiver:
                out.add(f"{sender}->{receiver}")
        else:  # nodes: every endpoint that is a node of the graph
            out |= {n for n in (sender, receiver) if n in graph.edge_index}
    return out


def canonical_mask(task: Task, graph: Graph) -> EdgeMask | None:
    if task.canonical_edges is None:
        return None
    qkv_graph = graph if graph.granularity == "qkv" else Graph(graph.arch, "qkv")
    return graph.mask_from_names(project_edges(task.canonical_edges(qkv_graph), graph))


def tpr_fpr(found: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    found, truth = found.bool(), truth.bool()
    positives, negatives = int(truth.sum()), int((~truth).sum())
    tp, fp = int((found & truth).sum()), int((found & ~truth).sum())
    return (tp / positives if positives else float("nan"), fp / negatives if negatives else float("nan"))


def node_indicator(mask: EdgeMask, universe: list[str]) -> torch.Tensor:
    nodes = mask.nodes()
    return torch.tensor([n in nodes for n in universe])


def node_universe(graph: Graph) -> list[str]:
    """Every component a circuit can contain (a head counts once, an MLP once)."""
    return sorted(graph.full_mask().nodes())


def edge_and_node_rates(found: EdgeMask, truth: EdgeMask) -> dict[str, float]:
    edge_tpr, edge_fpr = tpr_fpr(found.kept, truth.kept)
    universe = node_universe(found.graph)
    node_tpr, node_fpr = tpr_fpr(node_indicator(found, universe), node_indicator(truth, universe))
    return dict(edge_tpr=edge_tpr, edge_fpr=edge_fpr, node_tpr=node_tpr, node_fpr=node_fpr)
