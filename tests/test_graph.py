import pytest
from transformer_lens import HookedTransformerConfig

from circuitfind.graph import Architecture, Graph


def config(n_layers, n_heads, attn_only=False, d_model=64):
    return HookedTransformerConfig(n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_head=d_model // n_heads,
                                   d_mlp=None if attn_only else 4 * d_model, attn_only=attn_only, d_vocab=10, n_ctx=8,
                                   act_fn="relu")


# The ACDC paper's edge counts (qkv graph), and the head-level / node-level counts.
@pytest.mark.parametrize("name, cfg, split_embed, counts", [
    ("gpt2-small", config(12, 12, d_model=768), False, {"qkv": 32923, "heads": 11611, "nodes": 157}),
    ("attn-only-2l", config(2, 8, attn_only=True, d_model=512), False, {"qkv": 305, "heads": 97}),
    ("attn-only-4l", config(4, 8, attn_only=True, d_model=512), False, {"qkv": 1377}),
    ("tracr-reverse", config(4, 1), True, {"qkv": 106}),
    ("tracr-proportion", config(2, 1), True, {"qkv": 38}),
])
def test_edge_counts_match_the_paper(name, cfg, split_embed, counts):
    arch = Architecture.from_config(cfg, split_embed=split_embed)
    for granularity, expected in counts.items():
        assert Graph(arch, granularity).n_edges == expected, (name, granularity)


def test_edge_names_are_readable_and_unique():
    g = Graph(Architecture(n_layers=4, n_heads=2, has_mlps=True, split_embed=False))
    names = [e.name for e in g.edges]
    assert len(set(names)) == len(names)
    for name in ["a3.h0->resid_post", "m1->m2", "embed->a3.h0<v>", "a3.h0<q>", "a2.h1->m2", "m2->a3.h1<k>"]:
        assert name in g.edge_index
    # heads of one layer do not feed each other; an MLP does not feed its own layer's heads
    for name in ["a2.h0->a2.h1<q>", "m2->a2.h0<q>", "m2->m2", "a3.h0->m2"]:
        assert name not in g.edge_index
    assert g.edges[g.edge_index["a3.h0<q>"]].sender == "a3.h0<q>"
    assert g.edges[g.edge_index["a3.h0<q>"]].receiver == "a3.h0"


def test_acdc_visits_edges_in_the_reference_implementations_order():
    g = Graph(Architecture(n_layers=2, n_heads=2, has_mlps=True, split_embed=True))
    visits = [(receiver, [g.edges[e].name for e in edges]) for receiver, edges in g.visits]
    assert [r for r, _ in visits[:2]] == ["resid_post", "m1"]
    # layer 1 after its MLP: the q/k/v nodes letter-major (v, k, q), heads high to low, then the inputs
    assert visits[2:8] == [("a1.h1", ["a1.h1<v>"]), ("a1.h0", ["a1.h0<v>"]), ("a1.h1", ["a1.h1<k>"]),
                           ("a1.h0", ["a1.h0<k>"]), ("a1.h1", ["a1.h1<q>"]), ("a1.h0", ["a1.h0<q>"])]
    assert [r for r, _ in visits[8:15]] == ["a1.h1<v>", "a1.h0<v>", "a1.h1<k>", "a1.h0<k>", "a1.h1<q>", "a1.h0<q>", "m0"]
    # senders: later layers first, a layer's MLP before its heads, heads high to low, token before position
    into_m1 = [g.edges[i].sender for i in g.incoming["m1"]]
    assert into_m1 == ["a1.h1", "a1.h0", "m0", "a0.h1", "a0.h0", "tok_embed", "pos_embed"]
    assert [e for _, edges in g.visits for e in edges] == list(range(g.n_edges))


def test_every_slot_belongs_to_at_most_one_edge_and_stages_are_consistent():
    for granularity in ("qkv", "heads", "nodes"):
        g = Graph(Architecture(n_layers=3, n_heads=2, has_mlps=True, split_embed=False), granularity)
        slots, owners = g.slot_edge_pairs
        assert len(set(slots.tolist())) == len(slots)
        for e in g.edges:
            assert e.stage == min(g.slot_stage(s) for s in g.edge_slots(e.index))


def test_unknown_granularity_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown graph granularity 'fine'"):
        Graph(Architecture(1, 1, True, False), "fine")  # type: ignore[arg-type]
