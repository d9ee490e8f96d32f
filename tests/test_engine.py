"""The patching engine's invariants, and its agreement with the slow hook-based reference."""

import pytest
import torch

from circuitfind.engine import PatchEngine, UnsupportedModelError, make_ablation
from circuitfind.core.graph import Architecture, EdgeMask, Graph
from circuitfind.engine.reference import reference_ablation, reference_logits

from conftest import tiny_model


def setup(model, granularity="qkv", split_embed=False, corruption="corrupted", batch=4, seq=6, seed=0,
          shuffle_positions=False):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, model.cfg.d_vocab, (batch, seq), generator=g)
    corrupted = torch.randint(0, model.cfg.d_vocab, (batch, seq), generator=g)
    graph = Graph(Architecture.from_config(model.cfg, split_embed=split_embed), granularity)
    ablation = make_ablation(corruption, model, graph, clean, corrupted, shuffle_positions=shuffle_positions)
    engine = PatchEngine(model, graph, clean, ablation)
    return graph, engine, clean, corrupted


def random_masks(graph, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    for p in (0.1, 0.5, 0.9)[:n]:
        yield EdgeMask(graph, (torch.rand(graph.n_edges, generator=g) > p).double())
    yield EdgeMask(graph, torch.rand(graph.n_edges, generator=g, dtype=torch.float64))  # SP-style fractions


def assert_engine_matches_the_reference(model, graph, engine, clean, corrupted, corruption, n_masks=3, atol=1e-9):
    """The engine's logits equal the hook reference's on random and fractional masks."""
    ablated = reference_ablation(model, corrupted, corruption)
    for mask in random_masks(graph, n_masks):
        torch.testing.assert_close(engine.logits(mask), reference_logits(model, graph, clean, ablated, mask),
                                   rtol=0, atol=atol)


def assert_mask_gradient_matches_finite_differences(graph, engine, seed=5, eps=1e-6):
    """The mask gradient of a random weighting of the logits, along a random direction, equals the
    central finite difference at a random fractional mask."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(graph.n_edges, generator=g, dtype=torch.float64).requires_grad_(True)
    direction = torch.randn(graph.n_edges, generator=g, dtype=torch.float64)
    weights = torch.randn(engine.logits(mask.detach()).shape, generator=g, dtype=torch.float64)
    (engine.logits(mask) * weights).sum().backward()
    plus = (engine.logits(mask.detach() + eps * direction) * weights).sum()
    minus = (engine.logits(mask.detach() - eps * direction) * weights).sum()
    torch.testing.assert_close(mask.grad @ direction, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8)


MODELS = {
    "ln-mlp": dict(),
    "lnpre-attn-only": dict(attn_only=True, normalization_type="LNPre"),
    "no-norm-bidirectional": dict(normalization_type=None, attention_dir="bidirectional"),
    # Redwood's 2-layer model: positions enter only the queries' and keys' inputs
    "shortformer-attn-only": dict(attn_only=True, positional_embedding_type="shortformer"),
}


def can_split_embed(model) -> bool:
    return model.cfg.positional_embedding_type != "shortformer"


@pytest.mark.parametrize("model_kind", MODELS)
@pytest.mark.parametrize("split_embed", [False, True])
def test_nothing_removed_reproduces_the_model(model_kind, split_embed):
    model = tiny_model(**MODELS[model_kind])
    if split_embed and not can_split_embed(model):
        with pytest.raises(ValueError, match="positional embedding is not in the residual stream"):
            setup(model, split_embed=split_embed)
        return
    graph, engine, clean, _ = setup(model, split_embed=split_embed)
    torch.testing.assert_close(engine.logits(graph.full_mask()), model(clean), rtol=0, atol=1e-10)


@pytest.mark.parametrize("model_kind", MODELS)
@pytest.mark.parametrize("granularity", ["qkv", "heads", "nodes"])
def test_everything_removed_reproduces_the_corrupted_run(model_kind, granularity):
    model = tiny_model(**MODELS[model_kind])
    graph, engine, _, corrupted = setup(model, granularity=granularity)
    nothing = EdgeMask(graph, torch.zeros(graph.n_edges, dtype=torch.float64))
    torch.testing.assert_close(engine.logits(nothing), model(corrupted), rtol=0, atol=1e-10)


def test_invariants_hold_in_float32_too():
    model = tiny_model(dtype=torch.float32)
    graph, engine, clean, corrupted = setup(model)
    torch.testing.assert_close(engine.logits(graph.full_mask()), model(clean), rtol=1e-5, atol=1e-5)
    nothing = EdgeMask(graph, torch.zeros(graph.n_edges))
    torch.testing.assert_close(engine.logits(nothing), model(corrupted), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_kind", MODELS)
@pytest.mark.parametrize("granularity", ["qkv", "heads", "nodes"])
@pytest.mark.parametrize("corruption", ["corrupted", "zero", "mean"])
def test_engine_agrees_with_the_hook_reference_on_random_masks(model_kind, granularity, corruption):
    model = tiny_model(**MODELS[model_kind])
    graph, engine, clean, corrupted = setup(model, granularity=granularity, split_embed=can_split_embed(model),
                                            corruption=corruption)
    ablated = reference_ablation(model, corrupted, corruption)
    for mask in random_masks(graph, 3):
        expected = reference_logits(model, graph, clean, ablated, mask)
        torch.testing.assert_close(engine.logits(mask), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("corruption", ["corrupted", "mean"])
@pytest.mark.parametrize("granularity", ["qkv", "heads"])
def test_shuffled_positions_agree_with_the_hook_reference(corruption, granularity):
    model = tiny_model()
    graph, engine, clean, corrupted = setup(model, granularity, split_embed=True, corruption=corruption,
                                            shuffle_positions=True)
    ablated = reference_ablation(model, corrupted, corruption, shuffle_positions=True)
    for mask in random_masks(graph, 2):
        torch.testing.assert_close(engine.logits(mask), reference_logits(model, graph, clean, ablated, mask),
                                   rtol=0, atol=1e-9)
    # the permutation is the reference's recipe, recorded, and moves something
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(49)
        expected = torch.randperm(clean.shape[1])
    assert engine.ablation.position_order == tuple(expected.tolist()) != tuple(range(clean.shape[1]))
    # removing only pos_embed -> a1.h0<q> changes the output now (the corrupted prompts share positions)
    unshuffled = setup(model, granularity, split_embed=True, corruption=corruption)[1]
    mask = graph.full_mask().values.double()
    mask[graph.edge_index["pos_embed->a1.h0" + ("<q>" if granularity == "qkv" else "")]] = 0
    torch.testing.assert_close(unshuffled.logits(mask), model(clean), rtol=0, atol=1e-10)
    assert (engine.logits(mask) - model(clean)).abs().max() > 1e-4


def test_shuffled_positions_are_refused_without_a_positional_sender():
    model = tiny_model()
    with pytest.raises(ValueError, match="shuffle_positions needs a model whose positional embedding"):
        setup(model, split_embed=False, shuffle_positions=True)


def test_zero_ablated_queries_come_from_the_run_with_every_sender_zeroed():
    """With non-zero biases, a zero-ablated q/k/v is what the biases make of an all-zero residual:
    not zero, the same as the reference's hooked forward, and not what literal zeros would give."""
    model = tiny_model(n_layers=3)
    graph, engine, clean, _ = setup(model, corruption="zero")
    block = model.blocks[1]
    residual = (model.blocks[0].attn.b_O).expand(1, clean.shape[1], -1)  # all that is left before layer 1
    expected_q = block.ln1(residual) @ block.attn.W_Q[2] + block.attn.b_Q[2]
    torch.testing.assert_close(engine.ablation.qkv[1, 0, 0, :, 2], expected_q[0], rtol=0, atol=1e-12)
    assert expected_q.abs().max() > 1e-2
    mask = graph.full_mask().values.double()
    mask[[graph.edge_index["a1.h2<q>"], graph.edge_index["a2.h0<v>"], graph.edge_index["a0.h1<k>"]]] = 0
    mask = EdgeMask(graph, mask)
    expected = reference_logits(model, graph, clean, reference_ablation(model, clean, "zero"), mask)
    torch.testing.assert_close(engine.logits(mask), expected, rtol=0, atol=1e-10)
    literal = reference_ablation(model, clean, "corrupted")
    literal = {name: torch.zeros_like(value) for name, value in literal.items()}
    assert (reference_logits(model, graph, clean, literal, mask) - expected).abs().max() > 1e-4


def test_removing_a_q_edge_gives_the_head_its_corrupted_query():
    """The reference patches hook_q directly; the engine must agree, and the change must show."""
    model = tiny_model()
    graph, engine, clean, corrupted = setup(model)
    mask = graph.full_mask().values.double()
    mask[graph.edge_index["a1.h2<q>"]] = 0
    mask = EdgeMask(graph, mask)
    expected = reference_logits(model, graph, clean, reference_ablation(model, corrupted, "corrupted"), mask)
    torch.testing.assert_close(engine.logits(mask), expected, rtol=0, atol=1e-10)
    assert (engine.logits(mask) - model(clean)).abs().max() > 1e-4


def test_a_run_restarted_from_the_cache_equals_a_full_run():
    model = tiny_model(n_layers=3)
    graph, engine, clean, _ = setup(model)
    positions = torch.tensor([[1, 5]] * clean.shape[0])
    _, cache = engine.run(graph.full_mask(), positions, record=True)
    g = torch.Generator().manual_seed(3)
    # every order ACDC can produce (descending stages, repeats) and some it cannot (ascending):
    # whatever an earlier restart wrote into the engine's reused buffer must not leak into the next
    stages = list(range(2 * graph.n_layers + 1))
    for stage in stages[::-1] + stages + [3, 3, 1, 5, 0, 6, 2]:
        # change only edges read at or after `stage`, as ACDC does
        mask = graph.full_mask().values.double()
        late = [e.index for e in graph.edges if e.stage >= stage]
        mask[late] = (torch.rand(len(late), generator=g) > 0.5).double()
        full, _ = engine.run(mask, positions)
        restarted, _ = engine.run(mask, positions, start_stage=stage, cache=cache)
        torch.testing.assert_close(restarted, full, rtol=0, atol=1e-12)


@pytest.mark.parametrize("granularity, corruption", [("qkv", "corrupted"), ("qkv", "zero"), ("heads", "mean")])
def test_a_batch_of_candidate_masks_equals_each_run_alone(granularity, corruption):
    """ACDC's batched edge tests: candidates differing only in the edges into one stage's
    receivers, from one forward, each equal to its own restarted (and full) run."""
    model = tiny_model(n_layers=3)
    graph, engine, clean, _ = setup(model, granularity=granularity, corruption=corruption)
    positions = torch.tensor([[1, 5]] * clean.shape[0])
    _, cache = engine.run(graph.full_mask(), positions, record=True)
    g = torch.Generator().manual_seed(4)
    for stage in range(2 * graph.n_layers + 1):
        at_stage = [e.index for e in graph.edges if e.stage == stage]
        later = [e.index for e in graph.edges if e.stage > stage]
        if not at_stage:
            continue
        base = graph.full_mask().values.double()
        base[later] = (torch.rand(len(later), generator=g) > 0.5).double()
        candidates = base.repeat(5, 1)
        candidates[:, at_stage] = (torch.rand(5, len(at_stage), generator=g) > 0.4).double()
        batched, _ = engine.run(candidates, positions, start_stage=stage, cache=cache)
        assert batched.shape[0] == 5
        for mask, logits in zip(candidates, batched):
            alone, _ = engine.run(mask, positions, start_stage=stage, cache=cache)
            torch.testing.assert_close(logits, alone, rtol=0, atol=1e-12)
            torch.testing.assert_close(logits, engine.logits(mask, positions), rtol=0, atol=1e-12)


def test_batched_masks_that_differ_after_the_start_stage_are_refused():
    model = tiny_model(n_layers=2)
    graph, engine, _, _ = setup(model)
    _, cache = engine.run(graph.full_mask(), record=True)
    candidates = graph.full_mask().values.double().repeat(2, 1)
    candidates[1, [e.index for e in graph.edges if e.stage == 2][0]] = 0
    with pytest.raises(ValueError, match="batched masks may differ only in edges read at stage 0"):
        engine.run(candidates, start_stage=0, cache=cache)


def test_positions_select_the_metric_positions():
    model = tiny_model()
    graph, engine, clean, _ = setup(model)
    positions = torch.tensor([[0, 3], [1, 2], [5, 5], [4, 0]])
    at = engine.logits(graph.full_mask(), positions)
    full = model(clean)
    for b in range(4):
        torch.testing.assert_close(at[b], full[b, positions[b]], rtol=0, atol=1e-10)


def test_gradients_flow_to_fractional_masks():
    model = tiny_model()
    graph, engine, _, _ = setup(model)
    mask = torch.full((graph.n_edges,), 0.7, dtype=torch.float64, requires_grad=True)
    engine.logits(mask).sum().backward()
    assert mask.grad is not None and mask.grad.abs().sum() > 0


def test_clean_and_corrupted_prompts_of_different_shapes_are_refused():
    model = tiny_model()
    graph = Graph(Architecture.from_config(model.cfg))
    with pytest.raises(ValueError, match="differ in shape"):
        make_ablation("corrupted", model, graph, torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))


def test_unsupported_architectures_are_refused_by_name():
    model = tiny_model()
    model.cfg.positional_embedding_type = "alibi"  # rotary is supported now (test_engine_families.py)
    graph = Graph(Architecture.from_config(model.cfg))
    with pytest.raises(UnsupportedModelError, match="positional_embedding_type='alibi'"):
        PatchEngine(model, graph, torch.zeros(1, 3, dtype=torch.long), make_ablation("zero", model, graph, torch.zeros(1, 3, dtype=torch.long), None))


def sparse_circuit(graph, n_kept, seed=0, final_row_removed=False):
    """A circuit like the canonical ones: a few edges kept, so that most receivers lose every edge
    (identical mask rows, read once) and most heads their q/k/v edges (inputs never read)."""
    g = torch.Generator().manual_seed(seed)
    values = torch.zeros(graph.n_edges, dtype=torch.float64)
    values[torch.randperm(graph.n_edges, generator=g)[:n_kept]] = 1
    if graph.granularity == "nodes":  # a node's edge is all of its outgoing slots, the output's included
        return EdgeMask(graph, values * (not final_row_removed))
    if final_row_removed:
        values[graph.incoming["resid_post"]] = 0
    else:  # one way to the output at least
        values[graph.incoming["resid_post"][0]] = 1
    return EdgeMask(graph, values)


@pytest.mark.parametrize("model_kind", MODELS)
@pytest.mark.parametrize("granularity", ["qkv", "heads", "nodes"])
@pytest.mark.parametrize("corruption", ["corrupted", "zero", "mean"])
def test_sparse_circuits_agree_with_the_hook_reference(model_kind, granularity, corruption):
    """The shortcuts a sparse circuit takes (shared inputs computed once, inputs of removed q/k/v
    edges skipped, no forward when the output reads no sender) against the slow reference."""
    model = tiny_model(**MODELS[model_kind])
    graph, engine, clean, corrupted = setup(model, granularity=granularity, split_embed=can_split_embed(model),
                                            corruption=corruption)
    ablated = reference_ablation(model, corrupted, corruption)
    for seed, n_kept in enumerate((1, 3, graph.n_edges // 5, graph.n_edges // 2)):
        for final_row_removed in (False, True):
            mask = sparse_circuit(graph, n_kept, seed, final_row_removed)
            expected = reference_logits(model, graph, clean, ablated, mask)
            torch.testing.assert_close(engine.logits(mask), expected, rtol=0, atol=1e-9)


def test_an_output_that_reads_no_sender_needs_no_forward():
    """Every edge into the final residual removed: the logits are the ablated residual's, computed
    without a forward, equal to the corrupted run's however much of the rest is kept."""
    model = tiny_model()
    graph, engine, clean, corrupted = setup(model)
    mask = graph.full_mask().values.double()
    mask[graph.incoming["resid_post"]] = 0
    positions = torch.tensor([[5], [3], [0], [4]])
    forwards = engine.n_forward
    logits = engine.logits(mask, positions)
    assert engine.n_forward == forwards
    torch.testing.assert_close(logits, model(corrupted).gather(1, positions[..., None].expand(-1, -1, 40)),
                               rtol=0, atol=1e-10)
    mask[graph.incoming["resid_post"][-1]] = 1e-3  # one edge barely kept: a forward again
    engine.logits(mask, positions)
    assert engine.n_forward == forwards + 1


def test_the_same_circuit_gives_the_same_logits_each_run():
    """Full runs reuse one scratch buffer for their senders: a run leaves nothing behind that
    changes the next."""
    model = tiny_model()
    graph, engine, _, _ = setup(model)
    first, second = sparse_circuit(graph, 30, 1), sparse_circuit(graph, 60, 2)
    before = engine.logits(first)
    engine.logits(second)
    assert torch.equal(engine.logits(first), before)
