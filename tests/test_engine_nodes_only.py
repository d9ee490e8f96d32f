"""A circuit's own nodes (``engine/nodes_only.py``): ``PatchEngine.circuit_logits`` computes only the
nodes a circuit's output reads, and its logits agree with the plain forward (``plain.py``) on every
model family, granularity and ablation, for pruned circuits, sparse and dense 0/1 masks and SP's
fractions."""

import pytest
import torch

from circuitfind.core.graph import Architecture, EdgeMask, Graph
from circuitfind.core.pruning import prune
from circuitfind.engine import plain_forward
from circuitfind.engine.layout import split_mask
from circuitfind.engine.nodes_only import needed_nodes, nodes_only_logits, read_at_positions_only

from test_engine import random_masks, setup, sparse_circuit
from test_engine_plain import ALL_MODELS


def plain(engine, mask, positions=None):
    return plain_forward(engine.model, engine.graph, engine.tokens, engine.ablation, mask, positions)


def poisoned(engine):
    """Fill the engine's scratch buffer with NaN: a node computed from a slab it never wrote shows."""
    batch, pos = engine.tokens.shape
    like = torch.empty(batch, pos, engine.model.cfg.d_model, dtype=engine.dtype)
    engine.place.body_buffer(engine.graph.n_senders, batch, like).fill_(float("nan"))


@pytest.mark.parametrize("model_name", ALL_MODELS)
@pytest.mark.parametrize("granularity, corruption", [("qkv", "corrupted"), ("heads", "zero"), ("nodes", "mean")])
def test_the_needed_nodes_agree_with_the_plain_forward(model_name, granularity, corruption):
    check_against_plain(model_name, granularity, corruption)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ALL_MODELS)
@pytest.mark.parametrize("granularity", ["qkv", "heads", "nodes"])
@pytest.mark.parametrize("corruption", ["corrupted", "zero", "mean"])
def test_the_needed_nodes_agree_with_the_plain_forward_everywhere(model_name, granularity, corruption):
    check_against_plain(model_name, granularity, corruption)


def check_against_plain(model_name, granularity, corruption):
    model = ALL_MODELS[model_name]()
    graph, engine, clean, _ = setup(model, granularity=granularity, corruption=corruption)
    sparse = sparse_circuit(graph, 6, 1)
    masks = [EdgeMask(graph, prune(graph, sparse.kept).double()), sparse, *random_masks(graph, 3),
             sparse_circuit(graph, 4, 2, final_row_removed=True)]
    positions = torch.tensor([[5, 1]] * clean.shape[0])
    for i, mask in enumerate(masks):
        expected = plain(engine, mask, positions)
        poisoned(engine)
        if not engine.ops.post_norm:  # post-norm blocks always take the full run
            torch.testing.assert_close(nodes_only_logits(engine, mask, positions), expected, rtol=0, atol=1e-9,
                                       msg=f"mask {i}")
        # the engine's choice (the needed nodes, or the full run for a dense mask)
        torch.testing.assert_close(engine.circuit_logits(mask, positions), expected, rtol=0, atol=1e-9,
                                   msg=f"mask {i}")
    torch.testing.assert_close(engine.circuit_logits(masks[0]), plain(engine, masks[0]), rtol=0, atol=1e-9)


def test_a_circuit_needs_the_senders_on_its_paths_only():
    """Hand-made: embed -> a0.h1<v> -> a1.h0<q> -> resid_post, and m0 -> a1.h2<k> (a1.h2 feeds
    nothing kept), and a1.h3 -> resid_post with a1.h3's q/k/v edges removed."""
    graph = Graph(Architecture(n_layers=2, n_heads=4, has_mlps=True, split_embed=False), "qkv")
    names = ["embed->a0.h1<v>", "a0.h1->a1.h0<q>", "a1.h0->resid_post", "m0->a1.h2<k>", "a1.h3->resid_post",
             "a1.h0<q>", "a0.h1<v>", "a1.h2<k>"]
    mask = graph.mask_from_names(names)
    removed, qkv_mask = split_mask(graph, mask, "cpu", torch.float64)
    needed, read = needed_nodes(graph, 1 - removed, qkv_mask)
    assert {graph.senders[i] for i in needed.nonzero().flatten().tolist()} == {"embed", "a0.h1", "a1.h0", "a1.h3"}
    read_names = {name for name, row in graph.receiver_index.items() if read[row]}
    # a1.h0 reads its q (kept) input only; a0.h1 its v; a1.h3's inputs are all removed
    assert read_names == {"resid_post", "a1.h0<q>", "a0.h1<v>"}


def test_nothing_kept_and_everything_kept():
    model = ALL_MODELS["ln-mlp"]()
    graph, engine, clean, _ = setup(model, corruption="zero")
    for mask in (EdgeMask(graph, torch.zeros(graph.n_edges, dtype=torch.float64)), graph.full_mask()):
        torch.testing.assert_close(nodes_only_logits(engine, mask), plain(engine, mask), rtol=0, atol=1e-9)
    torch.testing.assert_close(nodes_only_logits(engine, graph.full_mask()), model(clean), rtol=0, atol=1e-9)


def test_a_norm_it_does_not_know_is_run_as_the_module(monkeypatch):
    """The norm folded into the projection (TransformerLens' norms) and the norm module itself give
    the same logits."""
    from circuitfind.engine import nodes_only
    model = ALL_MODELS["ln-mlp"]()
    graph, engine, clean, _ = setup(model, corruption="mean")
    mask = sparse_circuit(graph, 40, 3)
    folded = nodes_only_logits(engine, mask)
    monkeypatch.setattr(nodes_only, "norm_parts", lambda ln: None)
    torch.testing.assert_close(nodes_only_logits(engine, mask), folded, rtol=0, atol=1e-9)
    torch.testing.assert_close(folded, plain(engine, mask), rtol=0, atol=1e-9)


@pytest.mark.parametrize("model_name", ["ln-mlp", "pythia", "no-norm-bidirectional"])
def test_a_node_read_at_the_metric_positions_only_is_computed_there(model_name):
    """Hand-made: embed -> m0 -> a1.h0<q> -> resid_post and m0 -> resid_post, with a1.h0's key from
    a0.h1: m0 and a1.h0 are read at the metric's positions only (m0 is computed there alone), a0.h1
    and the embedding everywhere (a key is read at every position a query attends to).  With m0 also
    into a1.h0's key, m0 is needed everywhere.  Either way the logits are the plain forward's."""
    model = ALL_MODELS[model_name]()
    graph, engine, clean, _ = setup(model, corruption="mean")
    names = ["embed->m0", "m0->a1.h0<q>", "a1.h0->resid_post", "m0->resid_post", "embed->a0.h1<v>",
             "a0.h1->a1.h0<k>", "a1.h0<q>", "a1.h0<k>", "a0.h1<v>"]
    positions = torch.tensor([[5, 1]] * clean.shape[0])
    for extra, only in (([], {"m0", "a1.h0"}), (["m0->a1.h0<k>"], {"a1.h0"})):
        mask = graph.mask_from_names(names + extra)
        removed, qkv_mask = split_mask(graph, mask, "cpu", engine.dtype)
        needed, read = needed_nodes(graph, 1 - removed, qkv_mask)
        at_only = read_at_positions_only(graph, 1 - removed, needed, read)
        assert {graph.senders[i] for i in at_only.nonzero().flatten().tolist()} == only
        poisoned(engine)
        torch.testing.assert_close(nodes_only_logits(engine, mask, positions), plain(engine, mask, positions),
                                   rtol=0, atol=1e-9)
