"""How guided ACDC (``methods/acdc_guided.py``) cuts ACDC's visits into blocks, and which blocks
wait on edges carried from earlier ones: graph structure only, no losses."""

from __future__ import annotations

import torch

from ..core.graph import Graph
from .acdc import visits


def blocks(graph: Graph, group: str) -> list[list[int]]:
    """ACDC's visits (indices into ``visits(graph)``) cut into blocks tested together: consecutive
    visits read at one stage, cut before a visit whose receiver sends an edge of the block (its
    feeding nothing depends on the block's decisions); ``group=receiver``: one visit each."""
    out: list[list[int]] = []
    senders: set[str] = set()
    stage = None
    for index, (receiver, incoming) in enumerate(visits(graph)):
        visit_stage = min(graph.edges[e].stage for e in incoming)
        if out and group != "receiver" and visit_stage == stage and receiver not in senders:
            out[-1].append(index)
        else:
            out.append([index])
            senders = set()
        stage = visit_stage
        senders.update(graph.edges[e].sender for e in incoming)
    return out


def feeds_only_through(graph: Graph, mask: torch.Tensor, receiver: str, edges: set[int]) -> bool:
    """Whether ``receiver`` feeds the circuit through ``edges`` alone, so that whether it feeds
    anything waits on their decisions (an output edge outside them decides it either way)."""
    if graph.granularity == "nodes" or receiver == "resid_post":
        return False
    out = [e for e in graph.outgoing[receiver] if bool(mask[e])]
    return bool(out) and all(e in edges for e in out)
