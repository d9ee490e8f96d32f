"""Building ablations: what each removed edge carries instead of its sender's value.

``corrupted`` (interchange) records every sender's value and every head's q/k/v on the corrupted
prompts; ``mean`` and ``mean_all`` average that recording over prompts (and positions).  Zero
ablation, as the reference implementation defines it, takes every ablated value from one forward in
which every sender is zeroed: the senders' are zero, but a head's q/k/v there is what its biases
make of the residual that is left (the attention output biases written before it, layer norm's
bias, ``b_Q``/``b_K``/``b_V``), not zero.

``shuffle_positions`` (models whose positional embedding is its own sender, tracr): the corrupted
run reads at position i the positional embedding of position ``perm[i]``, ``perm`` drawn as the
reference does (``torch.manual_seed(49)``, ``torch.randperm(n_pos)``), so that interchange
ablation, whose clean and corrupted prompts share every position, can see positional edges.
"""

from __future__ import annotations

import torch

from ..core.architecture import check_supported
from ..core.graph import Graph
from .patch import PatchEngine
from .model_reads import ModelView
from .senders import Ablation

POSITION_SHUFFLE_SEED = 49  # the reference implementation's


def shuffled_positions(n_pos: int) -> torch.Tensor:
    """The reference's permutation: ``torch.manual_seed(49)`` then ``torch.randperm(n_pos)`` (a
    generator of its own, seeded alike, draws the same numbers without touching the global one)."""
    return torch.randperm(n_pos, generator=torch.Generator().manual_seed(POSITION_SHUFFLE_SEED))


@torch.no_grad()
def record_activations(model: ModelView, graph: Graph, tokens: torch.Tensor,
                       position_order: torch.Tensor | None = None, activation_device: str = "model") -> Ablation:
    """Every sender's value and every head's q/k/v on ``tokens`` (the unpatched model): an
    unpatched run against an all-zero ablation stores exactly the values themselves."""
    kw = dict(dtype=model.cfg.dtype, device=tokens.device)
    nothing = Ablation("zero", senders=torch.zeros(graph.n_senders, 1, 1, 1, **kw), qkv=torch.zeros(1, **kw))
    engine = PatchEngine(model, graph, tokens, nothing, position_order=position_order,
                         activation_device=activation_device)
    _, cache = engine.run(graph.full_mask(), record=True, want_logits=False)
    assert cache is not None
    return Ablation("recorded", senders=cache.diff, qkv=torch.stack(cache.qkv))


@torch.no_grad()
def zero_ablation(model: ModelView, graph: Graph, tokens: torch.Tensor,
                  activation_device: str = "model") -> Ablation:
    """Every sender's ablated value is zero; each head's q/k/v is the one computed in a forward with
    every sender zeroed (on one prompt of ``tokens``: nothing there depends on the tokens).  That
    forward is this engine's with every residual edge removed and every q/k/v edge kept, against
    literal zeros."""
    cfg = model.cfg
    kw = dict(dtype=cfg.dtype, device=model.W_E.device)
    literal = Ablation("zero", senders=torch.zeros(graph.n_senders, 1, 1, cfg.d_model, **kw),
                       qkv=torch.zeros(graph.n_layers, 3, 1, 1, graph.n_heads, cfg.d_head, **kw))
    fine = graph if graph.granularity == "qkv" else Graph(graph.arch, "qkv")
    only_qkv = torch.tensor([fine.component(e.sender) == e.receiver for e in fine.edges], dtype=cfg.dtype)
    engine = PatchEngine(model, fine, tokens[:1].to(kw["device"]), literal, activation_device=activation_device)
    _, cache = engine.run(only_qkv, record=True, want_logits=False)
    assert cache is not None
    return Ablation("zero", senders=engine.place.store(literal.senders), qkv=torch.stack(cache.qkv))


def make_ablation(kind: str, model: ModelView, graph: Graph, clean: torch.Tensor,
                  corrupted: torch.Tensor, shuffle_positions: bool = False, activation_device: str = "model") -> Ablation:
    """``corrupted``: interchange with the corrupted prompts; ``zero``: every sender zeroed;
    ``mean``: the corrupted prompts' mean per position; ``mean_all``: their mean over prompts and
    positions.  ``shuffle_positions`` shuffles the corrupted run's positional embedding (it has no
    effect on zero ablation, which has no corrupted run).  ``activation_device``: where the
    ablated values are kept (``model`` or ``cpu``, as the engine that reads them)."""
    check_supported(model.cfg)  # an unsupported model is refused by name before any forward runs
    if kind == "zero":
        return zero_ablation(model, graph, clean, activation_device)
    if shuffle_positions and not graph.arch.split_embed:
        raise ValueError("corruption.shuffle_positions needs a model whose positional embedding is its own "
                         "sender (the tracr models)")
    if clean.shape != corrupted.shape:
        raise ValueError(f"clean prompts {tuple(clean.shape)} and corrupted prompts {tuple(corrupted.shape)} differ in shape")
    order = shuffled_positions(corrupted.shape[1]) if shuffle_positions else None
    recorded = record_activations(model, graph, corrupted, order, activation_device)
    recorded_order = None if order is None else tuple(order.tolist())
    if kind == "corrupted":
        return Ablation("corrupted", senders=recorded.senders, qkv=recorded.qkv, position_order=recorded_order)
    if kind == "mean":
        return Ablation("mean", senders=recorded.senders.mean(1, keepdim=True),
                        qkv=recorded.qkv.mean(2, keepdim=True), position_order=recorded_order)
    if kind == "mean_all":
        return Ablation("mean_all", senders=recorded.senders.mean((1, 2), keepdim=True),
                        qkv=recorded.qkv.mean((2, 3), keepdim=True), position_order=recorded_order)
    raise ValueError(f"unknown corruption {kind!r}; choose one of corrupted, zero, mean, mean_all")
