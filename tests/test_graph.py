import pytest
from transformer_lens import HookedTransformerConfig

from circuitfind.core.graph import Architecture, Graph
from circuitfind.methods.acdc import visits as acdc_visits


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
    named = [(receiver, [g.edges[e].name for e in edges]) for receiver, edges in acdc_visits(g)]
    assert [r for r, _ in named[:2]] == ["resid_post", "m1"]
    # layer 1 after its MLP: the q/k/v nodes letter-major (v, k, q), heads high to low, then the inputs
    assert named[2:8] == [("a1.h1", ["a1.h1<v>"]), ("a1.h0", ["a1.h0<v>"]), ("a1.h1", ["a1.h1<k>"]),
                           ("a1.h0", ["a1.h0<k>"]), ("a1.h1", ["a1.h1<q>"]), ("a1.h0", ["a1.h0<q>"])]
    assert [r for r, _ in named[8:15]] == ["a1.h1<v>", "a1.h0<v>", "a1.h1<k>", "a1.h0<k>", "a1.h1<q>", "a1.h0<q>", "m0"]
    # senders: later layers first, a layer's MLP before its heads, heads high to low, token before position
    into_m1 = [g.edges[i].sender for i in g.incoming["m1"]]
    assert into_m1 == ["a1.h1", "a1.h0", "m0", "a0.h1", "a0.h0", "tok_embed", "pos_embed"]
    assert [e for _, edges in acdc_visits(g) for e in edges] == list(range(g.n_edges))


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


def expected_edges(L, H, n_kv, has_mlps, parallel, granularity):
    """Edge counts by counting, layer by layer: layer l's heads read the 1 + l (H + 1) senders before
    them (H query inputs and n_kv key and value inputs, or per head / per key-value head one shared
    edge); the MLP also reads its own layer's heads unless the block is parallel."""
    per_layer_senders = H + (1 if has_mlps else 0)
    total = 1 + L * per_layer_senders  # resid_post reads every sender
    for l in range(L):
        before = 1 + l * per_layer_senders
        if granularity == "qkv":
            total += (H + 2 * n_kv) * (before + 1)  # inputs' edges and the q/k/v edges into the heads
        else:
            total += (H + (n_kv if n_kv != H else 0)) * before
        if has_mlps:
            total += before + (0 if parallel else H)
    return total


@pytest.mark.parametrize("repo", ["gpt2", "EleutherAI/pythia-70m", "EleutherAI/pythia-160m", "Qwen/Qwen2.5-0.5B",
                                  pytest.param("meta-llama/Llama-3.2-1B", marks=pytest.mark.slow),  # 196,633 edges
                                  "google/gemma-2-2b"])
def test_edge_counts_of_todays_families_at_their_real_shapes(repo):
    from circuitfind.models.loading import HUB_ARCHITECTURES

    cfg = HookedTransformerConfig(**HUB_ARCHITECTURES[repo])
    arch = Architecture.from_config(cfg)
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    assert arch.parallel == cfg.parallel_attn_mlp and (arch.n_kv_heads or cfg.n_heads) == n_kv
    for granularity in ("qkv", "heads"):
        expected = expected_edges(cfg.n_layers, cfg.n_heads, n_kv, not cfg.attn_only, cfg.parallel_attn_mlp, granularity)
        assert Graph(arch, granularity).n_edges == expected, granularity
    assert Graph(arch, "nodes").n_edges == 1 + cfg.n_layers * (cfg.n_heads + 1)


def test_published_count_of_pythia_70m():
    """The README's table, checked for the smallest (the others: the counting above)."""
    from circuitfind.models.loading import HUB_ARCHITECTURES

    cfg = HookedTransformerConfig(**HUB_ARCHITECTURES["EleutherAI/pythia-70m"])
    assert Graph(Architecture.from_config(cfg)).n_edges == 3724


def test_grouped_query_attention_names_key_value_heads_and_counts_their_edges_once():
    g = Graph(Architecture(n_layers=2, n_heads=4, has_mlps=True, split_embed=False, n_kv_heads=2))
    assert "a1.kv1<k>" in g.edge_index and "embed->a1.kv1<v>" in g.edge_index and "a1.h3<q>" in g.edge_index
    assert "a1.h3<k>" not in g.edge_index and "a1.kv2<k>" not in g.receivers
    e = g.edges[g.edge_index["a1.kv0<k>"]]
    assert (e.sender, e.receiver) == ("a1.kv0<k>", "a1.kv0")
    # the reference's letter-major order, with the k and v letters over the key/value heads
    qkv_edges = [e.name for e in g.edges if e.receiver in ("a1.kv0", "a1.kv1") or e.name.endswith("<q>") and e.name.startswith("a1.")]
    assert qkv_edges == ["a1.kv1<v>", "a1.kv0<v>", "a1.kv1<k>", "a1.kv0<k>", "a1.h3<q>", "a1.h2<q>", "a1.h1<q>", "a1.h0<q>"]
    heads = Graph(g.arch, "heads")
    assert set(heads.incoming) >= {"a1.h0", "a1.kv0"}
    assert len(heads.edge_slots("embed->a1.kv0")) == 2 and len(heads.edge_slots("embed->a1.h0")) == 1
    with pytest.raises(ValueError, match="cannot share 3 key/value heads"):
        Architecture(n_layers=1, n_heads=4, has_mlps=True, split_embed=False, n_kv_heads=3)
