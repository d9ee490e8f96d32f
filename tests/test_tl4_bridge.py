"""The model view's TransformerLens 4 backend: the engine's invariants on TransformerBridges over
tiny random Hugging Face models of each family (``bridge_families.py``): nothing removed is the
bridge's logits, everything removed is the ablated run, the engine equals the hook reference (run
through the bridge's hooks) on random and fractional masks, the mask gradient equals finite
differences, the plain forward (the engine's oracle) agrees with both, and ACDC on the engine keeps
what ACDC on the reference keeps.  Runs only where
TransformerLens 4 is installed (``make test-tl4``)."""

import pytest
import torch

from circuitfind.models.view import backend

if backend() != "tl4":
    pytest.skip("TransformerLens 4 is not installed (make test-tl4)", allow_module_level=True)

from circuitfind.engine import plain_forward  # noqa: E402
from circuitfind.core.graph import Architecture, EdgeMask, Graph  # noqa: E402
from circuitfind.methods import Problem, get_method  # noqa: E402
from circuitfind.core.metrics import KL  # noqa: E402
from circuitfind.engine.reference import reference_ablation, reference_logits  # noqa: E402

from bridge_families import FAMILIES, bridge_model  # noqa: E402
from test_acdc import random_task, reference_acdc, typical_single_edge_effect  # noqa: E402
from test_engine import (assert_engine_matches_the_reference, assert_mask_gradient_matches_finite_differences,
                         random_masks, setup)  # noqa: E402


@pytest.fixture(scope="module")
def models():
    return {}


def model_of(models, family):
    if family not in models:
        models[family] = bridge_model(family)
    return models[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_nothing_removed_reproduces_the_bridge(models, family):
    model = model_of(models, family)
    graph, engine, clean, _ = setup(model)
    torch.testing.assert_close(engine.logits(graph.full_mask()), model.bridge(clean), rtol=0,
                               atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("granularity", ["qkv", "nodes"])
def test_everything_removed_reproduces_the_corrupted_run(models, family, granularity):
    model = model_of(models, family)
    graph, engine, _, corrupted = setup(model, granularity=granularity)
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
def test_the_plain_forward_agrees_with_the_engine_and_the_hook_reference(models, family):
    model = model_of(models, family)
    graph, engine, clean, corrupted = setup(model, granularity="heads")
    ablated = reference_ablation(model, corrupted, "corrupted")
    for mask in random_masks(graph, 1):
        plain = plain_forward(engine.model, graph, engine.tokens, engine.ablation, mask)
        torch.testing.assert_close(engine.logits(mask), plain, rtol=0, atol=1e-9)
        torch.testing.assert_close(plain, reference_logits(model, graph, clean, ablated, mask), rtol=0,
                                   atol=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_through_the_mask_equals_finite_differences(models, family):
    model = model_of(models, family)
    graph, engine, _, _ = setup(model)
    assert_mask_gradient_matches_finite_differences(graph, engine)


@pytest.mark.parametrize("family, granularity, corruption", [
    ("gpt2", "qkv", "corrupted"), ("pythia", "qkv", "zero"), ("llama", "qkv", "corrupted"),
    ("qwen", "heads", "corrupted"), ("gemma2", "qkv", "corrupted"),
])
def test_acdc_on_the_engine_keeps_the_same_edges_as_acdc_on_the_reference(models, family, granularity, corruption):
    model = model_of(models, family)
    graph = Graph(Architecture.from_config(model.cfg), granularity)
    problem = Problem(random_task(model), graph, corruption, KL, progress=False)
    tau = typical_single_edge_effect(problem)
    fast = get_method("acdc")(problem, tau=tau)
    slow = reference_acdc(problem, tau=tau)
    assert 0 < fast.circuit.n_kept < graph.n_edges
    assert fast.circuit.kept_names() == slow.kept


def test_the_view_reads_rope_theta_and_the_post_norms_from_the_model_not_the_bridge_cfg(models):
    """TransformerLens 4.3's cfg keeps rotary_base 10000 whatever rope_theta is, and leaves Gemma-2's
    post-norms and local attention out: the view reads them from the Hugging Face model."""
    llama, gemma2, pythia = (model_of(models, f) for f in ("llama", "gemma2", "pythia"))
    assert llama.bridge.cfg.rotary_base == 10000 and llama.cfg.rotary_base == 5e4
    assert llama.cfg.n_key_value_heads == 2 and llama.blocks[0].attn._W_K.shape == (2, 24, 8)
    assert gemma2.cfg.use_normalization_before_and_after and not gemma2.bridge.cfg.use_normalization_before_and_after
    assert gemma2.cfg.attn_types == ["local", "global"] and gemma2.cfg.window_size == 3
    assert pythia.cfg.rotary_dim == 4 and pythia.cfg.parallel_attn_mlp


def test_a_rope_theta_the_engine_ignored_would_change_the_logits(models):
    """The rotary test has teeth: the same weights rotated with the default base give other logits."""
    model = model_of(models, "llama")
    graph, engine, clean, _ = setup(model)
    right = engine.logits(graph.full_mask())
    cos_sin = model._cos_sin
    try:
        model._cos_sin = {}
        rotary = model._rotary
        saved = rotary.inv_freq.clone()
        d = saved.shape[0] * 2
        rotary.inv_freq.copy_(1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float) / d)))
        wrong = engine.logits(graph.full_mask())
    finally:
        rotary.inv_freq.copy_(saved)
        model._cos_sin = cos_sin
    assert (right - wrong).abs().max() > 1e-6  # ten thousand times the agreement asked of the engine


def test_hooks_answer_to_transformer_lens_3_names(models):
    model = model_of(models, "gpt2")
    tokens = torch.randint(0, 40, (2, 5))
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"])
    assert set(cache) == {"blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"}
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], model.embed(tokens) + model.pos_embed(tokens))
    assert "hook_pos_embed" not in model_of(models, "llama").hook_dict


@pytest.mark.needs_gpt2_tokenizer
@pytest.mark.parametrize("family", ["llama", "qwen", "gemma2"])
def test_float64_bridges_compute_hugging_faces_function_in_float64(family):
    """Hugging Face's RMS norms and the 4.3 rotary attention bridge round to float32 in any dtype;
    circuitfind's bridges keep float64 in float64 (``float64.compute_in_float64``).  They compute the
    same function: in float32 the bridge's logits are the unbridged Hugging Face model's bit for bit,
    in float64 they differ from them by float32's rounding only."""
    import transformers

    from circuitfind.models.view import float64, tl4

    arch = FAMILIES[family]

    def hugging_face(dtype):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random_bridge's weights for seed 0
            return getattr(transformers, arch["original_architecture"])(tl4.hf_config(arch)).to(dtype).eval()

    tokens = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(1))
    for dtype in (torch.float32, torch.float64):
        bridged = tl4.random_bridge(arch, 0, dtype=dtype)
        assert all(getattr(block.attn, float64.MARK) for block in bridged.bridge.blocks)
        with torch.no_grad():
            rounded = hugging_face(dtype)(tokens).logits  # Hugging Face's own code: float32 inside
            if dtype == torch.float32:
                torch.testing.assert_close(bridged(tokens), rounded, rtol=0, atol=0)
            else:
                exact = bridged(tokens)
                torch.testing.assert_close(exact, rounded, rtol=0, atol=1e-5)
                assert (exact - rounded).abs().max() > 1e-12  # the rounding it no longer does
    assert float64.compute_in_float64(bridged.bridge) == 0  # applied once, by random_bridge


def test_a_deep_copy_of_a_float64_bridge_computes_with_its_own_weights(models):
    """The float64 norms and softmax are bound to their modules: a copied bridge's follow the copy."""
    import copy

    model = model_of(models, "llama")
    tokens = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(4))
    twin = copy.deepcopy(model.bridge)
    torch.testing.assert_close(twin(tokens), model.bridge(tokens), rtol=0, atol=0)
    with torch.no_grad():
        twin.original_model.model.norm.weight.mul_(2)
    assert (twin(tokens) - model.bridge(tokens)).abs().max() > 1e-3
