"""TransformerLens 4's native bridges as the model view (``models/view/native.py``): the shipped
HookedTransformer weights (``induction_2l``, the tracr programs) loaded into one, and a random native
model that rotates adjacent pairs with a non-default rotary base, grouped-query attention and
partial rotary.  The same invariants as under TransformerLens 3.9, at its tolerances (float64):
nothing removed is the bridge's logits, everything removed the corrupted run, the engine equals the
hook reference (which reads the view's per-head q/k/v input and result hooks) on random and
fractional masks, the mask gradient equals finite differences, and ACDC on the engine keeps what
ACDC on the reference keeps.  Runs only where TransformerLens 4 is installed (``make test-tl4``)."""

import pytest
import torch
import torch.nn.functional as F

from circuitfind.models.view import backend

if backend() != "tl4":
    pytest.skip("TransformerLens 4 is not installed (make test-tl4)", allow_module_level=True)

from circuitfind.core.graph import Architecture, EdgeMask, Graph  # noqa: E402
from circuitfind.core.metrics import KL  # noqa: E402
from circuitfind.methods import Problem, get_method  # noqa: E402
from circuitfind.models.loading import load_model  # noqa: E402
from circuitfind.models.tracr import load_tracr_model  # noqa: E402
from circuitfind.models.view import model_view, native  # noqa: E402

from test_acdc import random_task, reference_acdc, typical_single_edge_effect  # noqa: E402
from test_engine import (assert_engine_matches_the_reference, assert_mask_gradient_matches_finite_differences,  # noqa: E402
                         setup)

# rotates adjacent pairs of the first 6 of each head's 8 dimensions, base 5e4; 4 query heads share
# 2 key/value heads; RMSNorm (kept in float64 for float64 weights) and a GELU MLP
ROTARY = dict(n_layers=2, n_heads=4, d_model=32, d_head=8, d_mlp=64, d_vocab=40, n_ctx=16, act_fn="gelu",
              normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=6, rotary_base=5e4,
              n_key_value_heads=2)


def rotary_native(seed=0, **overrides) -> native.NativeView:
    view = native.native_model_view(dict(ROTARY, **overrides), None, seed=seed, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # TransformerLens starts biases at 0 and norm weights at 1, which would hide mistakes
        for name, param in view.bridge.original_model.named_parameters():
            if name.endswith("bias") or "ln" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return native.NativeView(view.bridge)  # re-read the perturbed weights


def build(family):
    if family == "induction_2l":
        return load_model({"kind": "shipped", "name": "induction_2l", "dtype": "float64"})
    if family == "tracr_reverse":
        return load_tracr_model("tracr_reverse", dtype=torch.float64).model
    return rotary_native()


FAMILIES = ["induction_2l", "tracr_reverse", "rotary-adjacent"]


@pytest.fixture(scope="module")
def models():
    return {}


def model_of(models, family):
    if family not in models:
        models[family] = build(family)
    return models[family]


def test_the_shipped_weights_load_into_native_bridges_with_what_the_reference_needs(models):
    induction, reverse, rotary = (model_of(models, f) for f in FAMILIES)
    for view in (induction, reverse, rotary):
        assert type(view) is native.NativeView and type(view.bridge).__name__ == "TransformerBridge"
        assert model_view(view.bridge).__class__ is native.NativeView
    assert induction.unembed.b_U.abs().max() > 1  # induction_2l's unembedding bias, which the native head lacks
    assert reverse.cfg.attention_dir == "bidirectional" and reverse.cfg.normalization_type is None
    assert reverse.cfg.d_vocab_out == 3 and reverse.ln_final is None
    assert rotary.cfg.rotary_adjacent_pairs and rotary.cfg.rotary_base == 5e4 and rotary.cfg.rotary_dim == 6
    assert not rotary.bridge.cfg.rotary_adjacent_pairs  # the bridge's cfg says otherwise
    assert rotary.cfg.n_key_value_heads == 2 and rotary.blocks[0].attn._W_K.shape == (2, 32, 8)


def test_induction_2l_still_does_induction():
    """Its weights mapped wrongly would not: the repeated half of BOS + s + s is predicted far better
    than the first (the training script measured 0.24 against 6.26)."""
    model = load_model({"kind": "shipped", "name": "induction_2l"})
    span = torch.randint(1, 512, (32, 31), generator=torch.Generator().manual_seed(3))
    tokens = torch.cat([torch.zeros(32, 1, dtype=torch.long), span, span], dim=1)
    nll = F.cross_entropy(model(tokens)[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    assert nll[:, 1:31].mean() > 5 and nll[:, 32:62].mean() < 0.5


@pytest.mark.parametrize("family", FAMILIES)
def test_nothing_removed_reproduces_the_bridge(models, family):
    model = model_of(models, family)
    graph, engine, clean, _ = setup(model)
    torch.testing.assert_close(engine.logits(graph.full_mask()), model.bridge(clean), rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_everything_removed_reproduces_the_corrupted_run(models, family):
    model = model_of(models, family)
    graph, engine, _, corrupted = setup(model)
    nothing = EdgeMask(graph, torch.zeros(graph.n_edges, dtype=torch.float64))
    torch.testing.assert_close(engine.logits(nothing), model.bridge(corrupted), rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("granularity, corruption", [("qkv", "corrupted"), ("qkv", "zero"), ("heads", "mean")])
def test_engine_agrees_with_the_hook_reference_on_random_and_fractional_masks(models, family, granularity,
                                                                              corruption):
    model = model_of(models, family)
    graph, engine, clean, corrupted = setup(model, granularity=granularity, corruption=corruption)
    assert_engine_matches_the_reference(model, graph, engine, clean, corrupted, corruption)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_through_the_mask_equals_finite_differences(models, family):
    model = model_of(models, family)
    graph, engine, _, _ = setup(model)
    assert_mask_gradient_matches_finite_differences(graph, engine)


@pytest.mark.parametrize("family, granularity", [("induction_2l", "heads"), ("rotary-adjacent", "qkv")])
def test_acdc_on_the_engine_keeps_the_same_edges_as_acdc_on_the_reference(models, family, granularity):
    model = model_of(models, family)
    graph = Graph(Architecture.from_config(model.cfg), granularity)
    problem = Problem(random_task(model), graph, "corrupted", KL, progress=False)
    tau = typical_single_edge_effect(problem)
    fast = get_method("acdc")(problem, tau=tau)
    slow = reference_acdc(problem, tau=tau)
    assert 0 < fast.circuit.n_kept < graph.n_edges
    assert fast.circuit.kept_names() == slow.kept


def test_rotating_halves_instead_of_adjacent_pairs_would_change_the_logits(models, monkeypatch):
    """The adjacent-pair test has teeth: the engine rotating the halves of each head (Hugging Face's
    rotate_half) moves its logits far from the bridge's."""
    model = model_of(models, "rotary-adjacent")
    graph, engine, clean, _ = setup(model)

    def rotate_halves(self, x):
        rotary = self.hf.rotary
        rot, n_pos = rotary.rotary_dim, x.shape[1]
        cos = rotary.cos_cached[:n_pos, 0::2].repeat(1, 2).to(x.dtype)[None, :, None]
        sin = rotary.sin_cached[:n_pos, 0::2].repeat(1, 2).to(x.dtype)[None, :, None]
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        turned = torch.cat((-x_rot[..., rot // 2:], x_rot[..., :rot // 2]), dim=-1)
        return torch.cat((x_rot * cos + turned * sin, x_pass), dim=-1)

    monkeypatch.setattr(native.NativeAttentionView, "apply_rotary", rotate_halves)
    wrong = engine.logits(graph.full_mask())
    assert (wrong - model.bridge(clean)).abs().max() > 1e-3


def test_the_rotary_base_changes_the_model(models):
    """The same weights rotated with the default base 10000 compute other logits: rotary_base 5e4 is
    not a no-op the invariants above could pass by ignoring."""
    tokens = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(2))
    assert (rotary_native()(tokens) - rotary_native(rotary_base=1e4)(tokens)).abs().max() > 1e-3
