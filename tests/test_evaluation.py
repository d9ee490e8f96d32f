import torch

from circuitfind.evaluation.rates import edge_and_node_rates, tpr_fpr
from circuitfind.tasks.ground_truth import project_edges
from circuitfind.core.graph import Architecture, Graph
from circuitfind.tasks.tracr import reverse_canonical


def test_tpr_fpr_counts():
    truth = torch.tensor([1, 1, 0, 0, 0], dtype=torch.bool)
    found = torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool)
    assert tpr_fpr(found, truth) == (0.5, 1 / 3)


def test_canonical_edges_project_onto_coarser_graphs():
    arch = Architecture(n_layers=4, n_heads=1, has_mlps=True, split_embed=True)
    names = reverse_canonical(Graph(arch))
    heads = project_edges(names, Graph(arch, "heads"))
    assert "m2->a3.h0" in heads and "pos_embed->a3.h0" in heads and "tok_embed->a0.h0" in heads
    assert not any("<" in n for n in heads) and len(heads) == 11
    nodes = project_edges(names, Graph(arch, "nodes"))
    assert nodes == {"tok_embed", "pos_embed", "a0.h0", "m0", "m1", "m2", "a3.h0"}


def test_node_level_counts_a_head_once_whatever_input_an_edge_touches():
    g = Graph(Architecture(n_layers=2, n_heads=2, has_mlps=False, split_embed=False))
    truth = g.mask_from_names(["a0.h1->a1.h0<q>", "a1.h0->resid_post"])
    found = g.mask_from_names(["a0.h1->a1.h0<k>", "a1.h0<v>"])
    rates = edge_and_node_rates(found, truth)
    assert rates["edge_tpr"] == 0.0
    # found touches a0.h1 and a1.h0; truth touches a0.h1, a1.h0 and resid_post
    assert rates["node_tpr"] == 2 / 3 and rates["node_fpr"] == 0.0
