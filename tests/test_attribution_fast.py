"""The engine's fast mask gradients (each layer's heads read through one shared input, single
receivers' rows given their gradient directly) and its generic autograd read, each against autograd
through the plain forward (``engine/plain.py``), the oracle: on every model family, granularity and
ablation, at the masks attribution uses."""

import pytest
import torch

from circuitfind.core.graph import Architecture, Graph
from circuitfind.engine import PatchEngine, make_ablation, plain_forward

from conftest import tiny_model
from families import FAMILIES, family_model

MODELS = {**{family: (lambda f=family: family_model(f)) for family in FAMILIES},
          "ln-mlp": lambda: tiny_model(n_layers=3, d_model=12),
          "lnpre-attn-only": lambda: tiny_model(attn_only=True, normalization_type="LNPre", d_model=12),
          "no-norm": lambda: tiny_model(normalization_type=None, d_model=12)}


def make_engine(model, granularity, corruption, split_embed=False):
    g = torch.Generator().manual_seed(0)
    clean, corrupted = (torch.randint(0, model.cfg.d_vocab, (3, 6), generator=g) for _ in range(2))
    graph = Graph(Architecture.from_config(model.cfg, split_embed=split_embed), granularity)
    return PatchEngine(model, graph, clean, make_ablation(corruption, model, graph, clean, corrupted))


def attribution_masks(graph):
    """1, alpha * 1 on both sides of one half (the engine reads mostly-removed inputs from the
    ablated side) and the inputs-IG pattern (alpha on the embedding edges, 1 elsewhere)."""
    embeds = torch.tensor([e.sender in set(graph.embed_names) for e in graph.edges])
    n = graph.n_edges
    return {"ones": torch.ones(n, dtype=torch.float64), "0.3": torch.full((n,), 0.3, dtype=torch.float64),
            "0.8": torch.full((n,), 0.8, dtype=torch.float64),
            "inputs": torch.where(embeds, 0.4, 1.0).double()}


def gradient(engine, values, weights, fast):
    engine.shared_head_reads, engine.n_one_input_reads = fast, 0
    mask = values.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((engine.logits(mask) * weights).sum(), mask)
    return grad, engine.n_one_input_reads


def plain_gradient(engine, values, weights):
    mask = values.clone().requires_grad_(True)
    logits = plain_forward(engine.model, engine.graph, engine.tokens, engine.ablation, mask)
    return torch.autograd.grad((logits * weights).sum(), mask)[0]


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("granularity", ["qkv", "heads", "nodes"])
@pytest.mark.parametrize("corruption", ["zero", "corrupted", "mean"])
def test_fast_mask_gradient_equals_the_generic_one(model_name, granularity, corruption):
    model = MODELS[model_name]()
    engine = make_engine(model, granularity, corruption)
    weights = torch.randn(engine.logits(engine.graph.full_mask()).shape, generator=torch.Generator().manual_seed(2),
                          dtype=torch.float64)
    for name, values in attribution_masks(engine.graph).items():
        fast, n_fast = gradient(engine, values, weights, True)
        generic, n_generic = gradient(engine, values, weights, False)
        oracle = plain_gradient(engine, values, weights)
        # the fast path is selected, the generic read not; post-norm blocks (Gemma-2) always take
        # the generic read: a receiver's input is not linear in its mask row there
        post_norm = getattr(model.cfg, "use_normalization_before_and_after", False)
        assert n_fast == (0 if post_norm else engine.graph.n_layers) and n_generic == 0, name
        assert oracle.abs().max() > 1e-3
        for path, grad in (("fast", fast), ("generic", generic)):
            torch.testing.assert_close(grad, oracle, rtol=1e-10, atol=1e-10 * float(oracle.abs().max()),
                                       msg=f"{name}, {path}")


def test_split_embeddings_inputs_pattern():
    """Token and position senders both carry alpha (the tracr graphs' inputs path)."""
    engine = make_engine(tiny_model(d_model=12), "qkv", "corrupted", split_embed=True)
    weights = torch.randn(engine.logits(engine.graph.full_mask()).shape, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(3))
    values = attribution_masks(engine.graph)["inputs"]
    fast, n_fast = gradient(engine, values, weights, True)
    oracle = plain_gradient(engine, values, weights)
    assert n_fast == engine.graph.n_layers
    torch.testing.assert_close(fast, oracle, rtol=1e-10, atol=1e-10 * float(oracle.abs().max()))


def test_rows_that_differ_fall_back_to_the_generic_read():
    """SP's fractional masks: no layer's rows agree, so no layer reads one input; the gradient is
    autograd's on the generic read (its finite-difference tests live in test_attribution.py)."""
    engine = make_engine(tiny_model(d_model=12), "qkv", "corrupted")
    values = torch.rand(engine.graph.n_edges, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    weights = torch.ones(engine.logits(engine.graph.full_mask()).shape, dtype=torch.float64)
    fast, n_fast = gradient(engine, values, weights, True)
    assert n_fast == 0
    torch.testing.assert_close(fast, plain_gradient(engine, values, weights), rtol=1e-10, atol=1e-12)


def test_the_full_mask_differentiable_run_gives_the_clean_logits_bit_for_bit():
    """EAP takes the clean logits from its own differentiable run at the full mask."""
    engine = make_engine(family_model("llama"), "qkv", "corrupted")
    with torch.no_grad():
        clean = engine.logits(engine.graph.full_mask())
    mask = torch.ones(engine.graph.n_edges, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(engine.logits(mask).detach(), clean, rtol=0, atol=0)


def test_per_prompt_gate_gradients_match_the_generic_path():
    """HISP's batched (vmapped) backward runs through the fast path too."""
    from test_attribution import random_problem
    from circuitfind.core.metrics import KL
    problem = random_problem(tiny_model(d_model=12), "corrupted", "qkv", metric=KL)
    engine, n = problem.engine(), problem.graph.n_edges

    def objective(logits):
        return logits[..., 3].sum(-1) - logits[..., 5].sum(-1)
    engine.shared_head_reads, engine.n_one_input_reads = True, 0
    fast = problem.gate_gradients(lambda gates: gates, n, objective)
    assert engine.n_one_input_reads == problem.graph.n_layers
    engine.shared_head_reads = False
    slow = problem.gate_gradients(lambda gates: gates, n, objective)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
