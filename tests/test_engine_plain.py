"""The plain patched forward (``engine/plain.py``) is the oracle of the fast engine: it agrees with
the hook reference, and the engine's logits (every shortcut: distinct rows read once, mostly
removed rows from the ablated side, skipped head inputs, the no-forward output, restarts and
batches) agree with it, in float64, on every model family, granularity and ablation."""

import pytest
import torch

from circuitfind.engine import plain_forward
from circuitfind.engine.reference import reference_ablation, reference_logits

from conftest import tiny_model
from families import FAMILIES, family_model
from test_engine import MODELS, can_split_embed, random_masks, setup, sparse_circuit

ALL_MODELS = {**{family: (lambda f=family: family_model(f)) for family in FAMILIES},
              **{kind: (lambda k=kind: tiny_model(**MODELS[k])) for kind in MODELS}}


def plain(engine, mask, positions=None):
    return plain_forward(engine.model, engine.graph, engine.tokens, engine.ablation, mask, positions)


@pytest.mark.parametrize("model_name", ALL_MODELS)
def test_the_plain_forward_agrees_with_the_hook_reference(model_name):
    model = ALL_MODELS[model_name]()
    for corruption, granularity in (("corrupted", "qkv"), ("zero", "heads")):
        graph, engine, clean, corrupted = setup(model, granularity=granularity, corruption=corruption,
                                                split_embed=can_split_embed(model) and model_name in MODELS)
        ablated = reference_ablation(model, corrupted, corruption)
        for mask in random_masks(graph, 1):  # 0/1 and fractional
            torch.testing.assert_close(plain(engine, mask), reference_logits(model, graph, clean, ablated, mask),
                                       rtol=0, atol=1e-9)


@pytest.mark.parametrize("model_name", ALL_MODELS)
@pytest.mark.parametrize("granularity", ["qkv", "heads", "nodes"])
@pytest.mark.parametrize("corruption", ["corrupted", "zero", "mean"])
def test_the_engine_agrees_with_the_plain_forward(model_name, granularity, corruption):
    model = ALL_MODELS[model_name]()
    graph, engine, clean, _ = setup(model, granularity=granularity, corruption=corruption)
    # most edges kept (the keeping read), a sparse circuit (distinct rows read once, from the
    # ablated side, skipped head inputs) and fractions (every row its own)
    masks = [*random_masks(graph, 1), sparse_circuit(graph, 3, 1)]
    positions = torch.tensor([[5, 1]] * clean.shape[0])
    for i, mask in enumerate(masks):
        torch.testing.assert_close(engine.logits(mask, positions), plain(engine, mask, positions),
                                   rtol=0, atol=1e-9, msg=f"mask {i}")


def test_the_plain_forward_is_differentiable_in_the_mask():
    """A finite difference through the plain forward: the gradient oracle is itself right."""
    model = family_model("gemma2")
    graph, engine, _, _ = setup(model)
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(graph.n_edges, generator=g, dtype=torch.float64).requires_grad_(True)
    direction = torch.randn(graph.n_edges, generator=g, dtype=torch.float64)
    weights = torch.randn(plain(engine, mask.detach()).shape, generator=g, dtype=torch.float64)
    (plain(engine, mask) * weights).sum().backward()
    eps = 1e-6
    plus = (plain(engine, mask.detach() + eps * direction) * weights).sum()
    minus = (plain(engine, mask.detach() - eps * direction) * weights).sum()
    torch.testing.assert_close(mask.grad @ direction, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8)
