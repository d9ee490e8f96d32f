"""The canonical circuits of IOI, Greater-Than and Docstring on their graphs: the edge counts the
reference implementation gives, and the structure the papers describe."""

import pytest

from circuitfind.tasks.ground_truth import ground_truth_mask
from circuitfind.core.graph import Architecture, Graph
from circuitfind.tasks.base import Task
from circuitfind.tasks.docstring import docstring_canonical
from circuitfind.tasks.greaterthan import greaterthan_canonical
from circuitfind.tasks.ioi import CIRCUIT as IOI_CIRCUIT
from circuitfind.tasks.ioi import ioi_canonical

GPT2_SMALL = Graph(Architecture(n_layers=12, n_heads=12, has_mlps=True, split_embed=False))
ATTN_ONLY_4L = Graph(Architecture(n_layers=4, n_heads=8, has_mlps=False, split_embed=False))


@pytest.mark.parametrize("canonical, graph, n_total, n_kept", [
    (ioi_canonical, GPT2_SMALL, 32_923, 1_041),
    (greaterthan_canonical, GPT2_SMALL, 32_923, 262),
    (docstring_canonical, ATTN_ONLY_4L, 1_377, 37),
])
def test_canonical_circuits_have_the_reference_edge_counts(canonical, graph, n_total, n_kept):
    edges = canonical(graph)
    assert graph.n_edges == n_total
    assert len(edges) == n_kept
    assert graph.mask_from_names(edges).n_kept == n_kept  # every name is an edge of the graph


def test_ioi_circuit_structure():
    edges = ioi_canonical(GPT2_SMALL)
    heads = {f"a{layer}.h{head}" for members in IOI_CIRCUIT.values() for layer, head in members}
    assert len(heads) == 26
    touched = {name.split("->")[0] for name in edges if "->" in name} | {
        name.split("->")[1].split("<")[0] for name in edges if "->" in name}
    assert {n for n in touched if n.startswith("a")} == heads  # no head outside the 26
    # name movers read S-inhibition heads with their query only, and write to the logits
    assert "a7.h3->a9.h9<q>" in edges and "a7.h3->a9.h9<k>" not in edges
    assert "a9.h9->resid_post" in edges and "a8.h6->resid_post" not in edges
    # only from a lower layer to a higher one: the induction head 5.5 cannot feed layer-5 receivers
    assert "a2.h2->a5.h5<k>" in edges and "a2.h2->a5.h5<q>" not in edges
    assert "embed->a9.h9<q>" not in edges and "embed->a9.h9<k>" in edges
    assert {"embed->resid_post", "m3->m7", "embed->m0", "a9.h9->m9", "m4->a5.h5<q>"} <= edges


def test_greaterthan_circuit_structure():
    edges = greaterthan_canonical(GPT2_SMALL)
    assert "a0.h1->m0" in edges  # a head feeds its own layer's MLP
    assert "a0.h3->m0" not in edges  # 0.3 and 0.5 feed only the mid heads
    assert {"a0.h3->a5.h5<q>", "a0.h3->a5.h5<k>", "a0.h3->a5.h5<v>"} <= edges
    assert "m2->a6.h9<q>" in edges and "m5->a6.h9<q>" in edges and "m5->a6.h9<k>" not in edges
    assert "m7->m8" in edges and "m8->m9" in edges and "m7->m9" not in edges
    assert "a9.h1->m9" in edges and "a9.h1->resid_post" in edges and "m11->resid_post" in edges


def test_docstring_circuit_structure():
    edges = docstring_canonical(ATTN_ONLY_4L)
    assert {"a3.h0->resid_post", "a3.h6->resid_post", "a1.h4->a3.h0<q>", "a2.h0->a3.h6<k>",
            "embed->a0.h5<v>", "a0.h5<v>"} <= edges
    assert "a0.h5<q>" not in edges  # 0.5 contributes only its value


@pytest.mark.parametrize("canonical", [ioi_canonical, greaterthan_canonical, docstring_canonical])
def test_canonical_circuits_refuse_other_graphs(canonical):
    other = Graph(Architecture(n_layers=2, n_heads=8, has_mlps=False, split_embed=False))
    with pytest.raises(ValueError, match="is named on"):
        canonical(other)


@pytest.mark.parametrize("granularity", ["heads", "nodes"])
def test_ioi_circuit_projects_onto_coarser_graphs(granularity):
    task = Task("ioi", model=None, validation=None, test=None, metrics={}, default_metric="kl",
                ground_truth_edges=ioi_canonical)
    mask = ground_truth_mask(task, Graph(GPT2_SMALL.arch, granularity))
    assert 0 < mask.n_kept < mask.graph.n_edges
    assert {n for n in mask.nodes() if n.startswith("a")} == {
        f"a{layer}.h{head}" for members in IOI_CIRCUIT.values() for layer, head in members}
