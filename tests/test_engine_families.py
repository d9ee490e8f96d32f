"""Today's block families (rotary, partial rotary, grouped-query attention, RMSNorm/RMSPre, gated
MLPs, parallel blocks, soft-caps, local attention, no biases): the engine's invariants, its agreement
with the hook reference, and ACDC on the engine against ACDC on the reference, each on a tiny random
model of the family built from a TransformerLens config (``families.py``)."""

import pytest
import torch

from circuitfind.engine import PatchEngine, UnsupportedModelError, make_ablation, plain_forward
from circuitfind.core.graph import Architecture, EdgeMask, Graph
from circuitfind.methods import Problem, get_method
from circuitfind.core.metrics import KL

from families import FAMILIES, family_model
from test_acdc import random_task, reference_acdc, typical_single_edge_effect
from test_engine import (assert_engine_matches_the_reference, assert_mask_gradient_matches_finite_differences,
                         setup)


@pytest.mark.parametrize("family", FAMILIES)
def test_nothing_removed_reproduces_the_model(family):
    model = family_model(family)
    graph, engine, clean, _ = setup(model)
    torch.testing.assert_close(engine.logits(graph.full_mask()), model(clean), rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("granularity", ["qkv", "heads", "nodes"])
def test_everything_removed_reproduces_the_corrupted_run(family, granularity):
    model = family_model(family)
    graph, engine, _, corrupted = setup(model, granularity=granularity)
    nothing = EdgeMask(graph, torch.zeros(graph.n_edges, dtype=torch.float64))
    torch.testing.assert_close(engine.logits(nothing), model(corrupted), rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("granularity, corruption", [("qkv", "corrupted"), ("qkv", "zero"), ("heads", "mean"),
                                                     ("nodes", "corrupted")])
def test_engine_agrees_with_the_hook_reference_on_random_and_fractional_masks(family, granularity, corruption):
    model = family_model(family)
    graph, engine, clean, corrupted = setup(model, granularity=granularity, corruption=corruption)
    assert_engine_matches_the_reference(model, graph, engine, clean, corrupted, corruption)


@pytest.mark.parametrize("family", ["pythia", "llama", "gemma", "gemma2"])
def test_restarted_and_batched_runs_equal_full_runs(family):
    """Parallel blocks restart an MLP test from the cached block input; GQA and soft-caps batch.
    Each candidate's logits equal its own full run and the plain forward's."""
    model = family_model(family, n_layers=3)
    graph, engine, clean, _ = setup(model)
    positions = torch.tensor([[1, 5]] * clean.shape[0])
    _, cache = engine.run(graph.full_mask(), positions, record=True)
    g = torch.Generator().manual_seed(3)
    for stage in reversed(range(2 * graph.n_layers + 1)):
        at_stage = [e.index for e in graph.edges if e.stage == stage]
        later = [e.index for e in graph.edges if e.stage > stage]
        base = graph.full_mask().values.double()
        base[later] = (torch.rand(len(later), generator=g) > 0.5).double()
        candidates = base.repeat(3, 1)
        candidates[:, at_stage] = (torch.rand(3, len(at_stage), generator=g) > 0.4).double()
        batched, _ = engine.run(candidates, positions, start_stage=stage, cache=cache)
        for mask, logits in zip(candidates, batched):
            torch.testing.assert_close(logits, engine.logits(mask, positions), rtol=0, atol=1e-12)
            oracle = plain_forward(model, graph, clean, engine.ablation, mask, positions)
            torch.testing.assert_close(logits, oracle, rtol=0, atol=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_through_the_mask_equals_finite_differences(family):
    model = family_model(family)
    graph, engine, _, _ = setup(model)
    assert_mask_gradient_matches_finite_differences(graph, engine)


@pytest.mark.parametrize("family, granularity, corruption", [
    ("pythia", "qkv", "corrupted"), ("llama", "qkv", "corrupted"), ("gemma", "heads", "zero"),
    ("qwen", "nodes", "corrupted"), ("rmspre-parallel", "qkv", "zero"), ("rotary", "heads", "corrupted"),
    ("gemma2", "qkv", "corrupted"), ("gemma2", "heads", "zero"),
])
def test_acdc_on_the_engine_keeps_the_same_edges_as_acdc_on_the_reference(family, granularity, corruption):
    model = family_model(family)
    graph = Graph(Architecture.from_config(model.cfg), granularity)
    problem = Problem(random_task(model), graph, corruption, KL, progress=False)
    tau = typical_single_edge_effect(problem)
    fast = get_method("acdc")(problem, tau=tau)
    slow = reference_acdc(problem, tau=tau)
    assert 0 < fast.circuit.n_kept < graph.n_edges
    assert fast.circuit.kept_names() == slow.kept


def test_a_shared_key_edge_gives_every_query_head_of_its_group_the_ablated_key():
    """GQA: ``a1.kv0<k>`` is one edge; removing it equals patching hook_k of key/value head 0 with
    its corrupted value, which every query head of the group reads (and no other head)."""
    model = family_model("llama")  # 6 query heads, 2 key/value heads
    graph, engine, clean, corrupted = setup(model)
    mask = graph.full_mask().values.double()
    mask[graph.edge_index["a1.kv0<k>"]] = 0
    _, cache = model.run_with_cache(corrupted, names_filter="blocks.1.attn.hook_k")

    def patch(k, hook):
        k = k.clone()
        k[:, :, 0] = cache[hook.name][:, :, 0]
        return k

    patched_z = {}
    expected = model.run_with_hooks(clean, fwd_hooks=[("blocks.1.attn.hook_k", patch),
                                                      ("blocks.1.attn.hook_z", lambda z, hook: patched_z.setdefault("z", z))])
    torch.testing.assert_close(engine.logits(mask), expected, rtol=0, atol=1e-10)
    _, clean_cache = model.run_with_cache(clean, names_filter="blocks.1.attn.hook_z")
    moved = (patched_z["z"] - clean_cache["blocks.1.attn.hook_z"]).abs().amax((0, 1, 3)) > 1e-9
    assert moved.tolist() == [True, True, True, False, False, False]


def test_a_parallel_mlp_does_not_read_its_own_layers_heads():
    graph = Graph(Architecture.from_config(family_model("pythia").cfg))
    assert "a0.h0->m0" not in graph.edge_index and "a0.h0->m1" in graph.edge_index
    assert "m0->m1" in graph.edge_index and "embed->m0" in graph.edge_index


@pytest.mark.parametrize("flag, value, named", [
    ("positional_embedding_type", "alibi", "positional_embedding_type='alibi'"),
    ("use_qk_norm", True, "use_qk_norm=True"),
])
def test_what_is_still_unsupported_is_refused_by_name(flag, value, named):
    model = family_model("llama")
    setattr(model.cfg, flag, value)
    graph = Graph(Architecture.from_config(model.cfg))
    with pytest.raises(UnsupportedModelError, match=named):
        PatchEngine(model, graph, torch.zeros(1, 3, dtype=torch.long), make_ablation("zero", model, graph, None, None))


def test_circuit_pictures_place_every_node_of_a_grouped_query_graph():
    from circuitfind.plots.circuit import node_position

    graph = Graph(Architecture(n_layers=2, n_heads=4, has_mlps=True, split_embed=False, n_kv_heads=2))
    for e in graph.edges:
        node_position(graph, e.sender), node_position(graph, e.receiver)
    assert node_position(graph, "a1.kv1")[0] == 2.5  # between its query heads 2 and 3


@pytest.mark.parametrize("n_kv, parallel", [(2, False), (4, True)])
def test_mib_circuit_files_spell_grouped_and_parallel_graphs_in_eap_names(n_kv, parallel):
    """Each ``eap`` edge carries the circuitfind edge it stands for: a query head's key input is its
    key/value head's, and a parallel block's MLP has no edge from its own layer's heads."""
    from circuitfind.runs.circuit_json import mib_circuit
    from circuitfind.methods.result import MethodResult

    graph = Graph(Architecture(n_layers=2, n_heads=4, has_mlps=True, split_embed=False, n_kv_heads=n_kv,
                               parallel=parallel))
    scores = torch.arange(graph.n_edges, dtype=torch.float64)
    kept = torch.zeros(graph.n_edges, dtype=torch.bool)
    kept[graph.edge_index["a0.h3->a1.kv1<k>" if n_kv == 2 else "a0.h3->a1.h3<k>"]] = True
    data = mib_circuit(MethodResult(graph, scores, EdgeMask(graph, kept)))
    in_graph = {name for name, info in data["edges"].items() if info["in_graph"]}
    assert in_graph == ({"a0.h3->a1.h2<k>", "a0.h3->a1.h3<k>"} if n_kv == 2 else {"a0.h3->a1.h3<k>"})
    assert data["cfg"]["parallel_attn_mlp"] == parallel
    assert ("a0.h0->m0" in data["edges"]) != parallel
