"""Restarting a run at a stage, and running ACDC's candidate circuits as one batch.

ACDC visits receivers from the output back, so every edge it has removed lies downstream of the
receiver under test: the senders below that receiver still hold their values from the unpatched
run.  A recorded run (``PatchEngine.run(..., record=True)``, a ``SenderCache``) therefore lets an
edge test start at the stage its receiver reads (stage 2l: layer l's attention, 2l+1: its MLP, 2L:
the output), reading the senders below from the cache.  The circuits of the next tests at one
stage differ only in edges read there: they run together, the batch candidate-major (candidates x
prompts), sharing the cached prefix (held once for the prompts).
"""

from __future__ import annotations

import torch

from ..core.graph import Graph
from .placement import Storage
from .senders import SenderCache, SenderDiffs


def check_candidates(graph: Graph, removed: torch.Tensor, qkv_mask: torch.Tensor, start_stage: int) -> None:
    """Batched masks (``removed`` [c, rows, senders], ``qkv_mask`` [c, L, 3, H]) must agree
    everywhere but in the receivers read at ``start_stage``."""
    g = graph
    differs = (removed != removed[:1]).any(0).any(1)  # [receivers]
    rows = differs.nonzero().flatten().tolist()
    layers = (qkv_mask != qkv_mask[:1]).any(0).flatten(1).any(1).nonzero().flatten().tolist()
    stages = {g.slot_stage(row * g.n_senders) for row in rows} | {2 * layer for layer in layers}
    if stages - {start_stage}:
        raise ValueError(f"batched masks may differ only in edges read at stage {start_stage}, "
                         f"not at stages {sorted(stages - {start_stage})}")


def restarted_diffs(graph: Graph, place: Storage, cache: SenderCache, start_stage: int,
                    n_candidates: int) -> tuple[torch.Tensor, SenderDiffs]:
    """The residual stream at ``start_stage`` and the sender differences of a run restarted there
    for ``n_candidates`` masks: the senders below read from the cache, the rest written into the
    engine's scratch buffer (one copy per candidate)."""
    n_cached = graph.n_senders_before_stage(start_stage)
    resid = place.fetch(cache.resid[start_stage])
    body = place.body_buffer(graph.n_senders - n_cached, n_candidates * resid.shape[0], resid)
    diff = SenderDiffs(body, False, prefix=cache.diff[:n_cached], n_candidates=n_candidates, fetch=place.offload)
    if cache.attn_sums:  # post-norm blocks: the layers below the restart, from the cache
        diff.attn_sums = {l: (place.fetch(S), place.fetch(A)) for l, (S, A) in cache.attn_sums.items()
                          if 2 * l < start_stage}
    return resid, diff
