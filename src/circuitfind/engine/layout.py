"""How masks and batches are laid out in tensors: the engine's small shared helpers."""

from __future__ import annotations

import torch

from ..core.graph import EdgeMask, Graph


def split_mask(graph: Graph, mask: EdgeMask | torch.Tensor, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge mask values [..., n_edges] -> (removed [..., receivers, senders] = 1 - m on the
    receiver-by-sender slots, q/k/v masks [..., L, 3, H] = m on the head-input slots)."""
    g = graph
    values = mask.values if isinstance(mask, EdgeMask) else mask
    slots = g.slot_values(values.to(device=device, dtype=dtype))
    n_resid = g.n_rows * g.n_senders
    removed = 1 - slots[..., :n_resid].unflatten(-1, (g.n_rows, g.n_senders))
    qkv_mask = slots[..., n_resid:].unflatten(-1, (g.n_layers, 3, g.n_heads))
    return removed, qkv_mask


def gather_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [batch, pos, ...] at positions [batch, k] -> [batch, k, ...]."""
    index = positions.to(x.device).view(*positions.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return x.gather(1, index)


def per_candidate(x: torch.Tensor, n_candidates: int, dim: int) -> torch.Tensor:
    """Split a candidate-major batch dimension ``dim`` of size k*B into (k, B)."""
    return x.unflatten(dim, (n_candidates, -1))


def with_prompts(op, x: torch.Tensor, y: torch.Tensor, n_candidates: int, dim: int) -> torch.Tensor:
    """``op(x, y)`` where dimension ``dim`` of ``x`` is a candidate-major batch (k*B) and that of
    ``y`` holds the prompts once (B), broadcasts (1) or already matches: each candidate meets the
    same prompts' values (the ablation, the cached residual)."""
    if n_candidates == 1 or y.shape[dim] in (1, x.shape[dim]):
        return op(x, y)
    return op(per_candidate(x, n_candidates, dim), y.unsqueeze(dim)).flatten(dim, dim + 1)


def put_heads(qkv: torch.Tensor, index: torch.Tensor, values: torch.Tensor, n_candidates: int) -> torch.Tensor:
    """qkv [3, c*batch, pos, H, d_head] (candidate-major) with the head input of offset
    ``index[i]`` = candidate * 3H + which * H + head set to values[i] [batch, pos, d_head] (out of
    place, so that gradients reach both the shared projection and the per-head ones)."""
    three, cb, pos, n_heads, d_head = qkv.shape
    c = n_candidates
    flat = qkv.view(three, c, cb // c, pos, n_heads, d_head).permute(1, 0, 4, 2, 3, 5)
    flat = flat.reshape(c * three * n_heads, cb // c, pos, d_head)
    flat = flat.scatter(0, index.view(-1, 1, 1, 1).expand_as(values), values)
    return flat.view(c, three, n_heads, cb // c, pos, d_head).permute(1, 0, 3, 4, 2, 5).reshape(qkv.shape)
