"""Pruning a circuit to its input-to-output paths: hand-derived answers, and what it does to the
patched model's output under each ablation and granularity."""

import pytest
import torch

from circuitfind.core.graph import Architecture, Graph
from circuitfind.core.pruning import prune

from conftest import random_problem, tiny_model


def names_of(graph, kept):
    return {graph.edges[i].name for i in torch.nonzero(kept).flatten().tolist()}


def mask_of(graph, names):
    return graph.mask_from_names(names).kept


def test_heads_graph_by_hand():
    # two layers of one head, no MLPs: embed -> a0.h0 -> a1.h0 -> resid_post, plus the skips
    graph = Graph(Architecture(n_layers=2, n_heads=1, has_mlps=False, split_embed=False), "heads")
    assert names_of(graph, torch.ones(graph.n_edges, dtype=torch.bool)) == {
        "embed->a0.h0", "embed->a1.h0", "a0.h0->a1.h0", "embed->resid_post", "a0.h0->resid_post",
        "a1.h0->resid_post"}
    # a0.h0 reads nothing kept: its two edges go; a1.h0 reads the embedding and is read by the output
    kept = mask_of(graph, ["a0.h0->a1.h0", "a0.h0->resid_post", "embed->a1.h0", "a1.h0->resid_post"])
    assert names_of(graph, prune(graph, kept)) == {"embed->a1.h0", "a1.h0->resid_post"}
    # a0.h0's output reaches nothing kept: the edge into it goes too, and then everything
    assert names_of(graph, prune(graph, mask_of(graph, ["embed->a0.h0", "a0.h0->a1.h0"]))) == set()
    # a complete chain is kept whole, and pruning is idempotent
    chain = mask_of(graph, ["embed->a0.h0", "a0.h0->a1.h0", "a1.h0->resid_post", "embed->resid_post"])
    assert torch.equal(prune(graph, chain), chain)
    assert torch.equal(prune(graph, prune(graph, kept)), prune(graph, kept))


def test_qkv_graph_by_hand():
    # one layer of one head and an MLP
    graph = Graph(Architecture(n_layers=1, n_heads=1, has_mlps=True, split_embed=False), "qkv")
    # the head's query is fed and its output read, but the q edge into the head itself is not kept
    kept = mask_of(graph, ["embed->a0.h0<q>", "a0.h0->m0", "m0->resid_post"])
    assert names_of(graph, prune(graph, kept)) == set()
    kept = mask_of(graph, ["embed->a0.h0<q>", "a0.h0<q>", "a0.h0->m0", "m0->resid_post", "embed->a0.h0<k>"])
    # the key input is fed but its edge into the head is not kept: it goes
    assert names_of(graph, prune(graph, kept)) == {"embed->a0.h0<q>", "a0.h0<q>", "a0.h0->m0", "m0->resid_post"}


def test_nodes_graph_keeps_nodes_only_while_an_embedding_is_kept():
    graph = Graph(Architecture(n_layers=1, n_heads=2, has_mlps=True, split_embed=True), "nodes")
    kept = mask_of(graph, ["a0.h1", "m0"])
    assert names_of(graph, prune(graph, kept)) == set()
    kept = mask_of(graph, ["pos_embed", "a0.h1", "m0"])
    assert torch.equal(prune(graph, kept), kept)


def test_grouped_query_heads_are_fed_through_their_key_value_head():
    graph = Graph(Architecture(n_layers=1, n_heads=4, has_mlps=False, split_embed=False, n_kv_heads=2), "qkv")
    # head 1 reads its key through key/value head 0 only: that is a path
    kept = mask_of(graph, ["embed->a0.kv0<k>", "a0.kv0<k>", "a0.h1->resid_post"])
    assert names_of(graph, prune(graph, kept)) == {"embed->a0.kv0<k>", "a0.kv0<k>", "a0.h1->resid_post"}
    # head 2 belongs to key/value head 1: no path
    kept = mask_of(graph, ["embed->a0.kv0<k>", "a0.kv0<k>", "a0.h2->resid_post"])
    assert names_of(graph, prune(graph, kept)) == set()


def _random_masks(graph, n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(graph.n_edges, generator=g) < p for p in torch.linspace(0.05, 0.6, n).tolist()]


def _backward_only(graph, kept):
    """Pruning of the edges whose receiver feeds nothing kept (the backward half alone): with every
    edge from an embedding and every q/k/v edge added, every node is fed, so ``prune`` removes only
    what reaches nothing kept (added edges leave only nodes that reach nothing new)."""
    feeding = torch.tensor([e.sender in graph.embed_names or "->" not in e.name for e in graph.edges])
    return kept & prune(graph, kept | feeding)


@pytest.mark.parametrize("granularity", ["qkv", "heads", "nodes"])
@pytest.mark.parametrize("corruption", ["corrupted", "zero", "mean"])
def test_pruning_never_changes_the_output_where_the_removed_edges_had_no_effect(granularity, corruption):
    """Under interchange ablation every pruned edge is inert (identical logits up to float64 rounding).
    Under zero and mean ablation the edges whose receiver feeds nothing kept are inert; an edge whose
    sender reads nothing kept is not (that sender computes from ablated inputs what its biases make
    of them), so there the pruned circuit is a different circuit: checked that pruning the receiver
    side alone changes nothing."""
    model = tiny_model(n_layers=2, n_heads=2)
    problem = random_problem(model, corruption, granularity)
    graph = problem.graph
    changed_somewhere = False
    for kept in _random_masks(graph, 6, seed=hash((granularity, corruption)) % 1000):
        pruned = prune(graph, kept)
        assert bool((pruned <= kept).all())
        before = problem.logits(kept.double())
        if corruption == "corrupted":
            torch.testing.assert_close(problem.logits(pruned.double()), before, rtol=0, atol=1e-9)
        else:
            torch.testing.assert_close(problem.logits(_backward_only(graph, kept).double()), before, rtol=0, atol=1e-9)
            changed_somewhere |= not torch.allclose(problem.logits(pruned.double()), before, atol=1e-9)
    if corruption != "corrupted" and granularity != "nodes":
        assert changed_somewhere  # the forward half matters here, as the docstring says
