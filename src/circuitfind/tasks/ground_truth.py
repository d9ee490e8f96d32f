"""A task's ground-truth circuit on a graph of any granularity."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..core.graph import EdgeMask, Graph

if TYPE_CHECKING:
    from .base import Task

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


def ground_truth_mask(task: Task, graph: Graph) -> EdgeMask | None:
    if task.ground_truth_edges is None:
        return None
    qkv_graph = graph if graph.granularity == "qkv" else Graph(graph.arch, "qkv")
    return graph.mask_from_names(project_edges(task.ground_truth_edges(qkv_graph), graph))
