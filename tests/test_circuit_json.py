"""circuit.json in the eap / MIB graph format, and ground truth read back from circuit files."""

import json
import math
from pathlib import Path

import pytest
import torch

from circuitfind.runs.circuit_json import (CircuitFileError, mib_circuit, mib_edges, qkv_view, read_circuit_file)
from circuitfind.core.graph import Architecture, EdgeMask, Graph
from circuitfind.methods.result import MethodResult
from circuitfind.tasks.ground_truth import ground_truth_mask
from circuitfind.runs.pipeline import ConfigError, run

from conftest import config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ioi_pairs.csv"


def random_result(graph: Graph, seed=0) -> MethodResult:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(graph.n_edges, generator=generator, dtype=torch.float64)
    return MethodResult(graph, scores, EdgeMask(graph, scores > 0.3))


def test_eap_graph_of_gpt2_small_has_its_published_edge_count():
    # MIB / EAP-IG count 32,491 edges for GPT-2 small; circuitfind's qkv graph adds one q/k/v-to-head
    # edge per head input (3 x 144) to the same edges.
    edges = mib_edges(12, 12)
    assert len(edges) == len(set(edges)) == 32_491
    graph = Graph(Architecture(12, 12, True, False), "qkv")
    ours = {e.name.replace("embed->", "input->").replace("->resid_post", "->logits")
            for e in graph.edges if "->" in e.name}
    assert ours == {f"{p}->{c}" for p, c in edges}
    assert graph.n_edges - len(ours) == 3 * 144


def test_attention_only_models_write_mlp_edges_out_of_the_graph():
    graph = Graph(Architecture(2, 3, False, False), "qkv")
    circuit = mib_circuit(MethodResult(graph, torch.ones(graph.n_edges), graph.full_mask()))
    mlp = {name: info for name, info in circuit["edges"].items() if "m0" in name or "m1" in name}
    assert mlp and all(info == dict(score=0.0, in_graph=False) for info in mlp.values())
    assert all(info["in_graph"] for name, info in circuit["edges"].items() if name not in mlp)
    assert circuit["nodes"]["m0"] == {"in_graph": False} and circuit["nodes"]["a1.h2"] == {"in_graph": True}
    assert circuit["cfg"] == dict(n_layers=2, n_heads=3, parallel_attn_mlp=False)


@pytest.mark.parametrize("split_embed", [False, True])
@pytest.mark.parametrize("granularity", ["qkv", "heads", "nodes"])
def test_round_trip_gives_the_same_circuit(tmp_path, granularity, split_embed):
    graph = Graph(Architecture(2, 2, True, split_embed), granularity)
    result = random_result(graph)
    path = tmp_path / "circuit.json"
    path.write_text(json.dumps(mib_circuit(result)))
    qkv_graph = Graph(graph.arch, "qkv")
    truth = ground_truth_mask(type("T", (), {"ground_truth_edges": read_circuit_file(path).edge_names})(), graph)
    assert torch.equal(truth.kept, result.circuit.kept)
    assert read_circuit_file(path).edge_names(qkv_graph) == {n for n, (_, k) in qkv_view(result).items() if k}


def test_plain_eap_files_and_edge_lists(tmp_path):
    graph = Graph(Architecture(2, 2, True, False), "qkv")
    kept = {"input->a0.h1<v>", "a0.h1->m0", "m0->a1.h0<q>", "a1.h0->logits"}
    eap = dict(cfg=dict(n_layers=2, n_heads=2, parallel_attn_mlp=False),
               edges={f"{p}->{c}": dict(score=1.0, in_graph=f"{p}->{c}" in kept) for p, c in mib_edges(2, 2)})
    (tmp_path / "eap.json").write_text(json.dumps(eap))
    expected = {"embed->a0.h1<v>", "a0.h1->m0", "m0->a1.h0<q>", "a1.h0->resid_post", "a0.h1<v>", "a1.h0<q>"}
    assert read_circuit_file(tmp_path / "eap.json").edge_names(graph) == expected
    (tmp_path / "list.txt").write_text("# the same circuit, mixed spellings\n" + "\n".join(
        ["embed->a0.h1<v>", "a0.h1->m0  # an MLP", "m0->a1.h0<q>", "a1.h0->logits", ""]))
    assert read_circuit_file(tmp_path / "list.txt").edge_names(graph) == expected
    (tmp_path / "edges.csv").write_text("edge,sender,receiver,score,kept,canonical\n"
                                        "a1.h0->resid_post,a1.h0,resid_post,1.0,1,\nm0->m1,m0,m1,0.5,0,\n")
    assert read_circuit_file(tmp_path / "edges.csv").edge_names(graph) == {"a1.h0->resid_post"}


@pytest.mark.parametrize("text, message", [
    ("{oops", "not JSON"),
    ('{"nodes": {}}', 'a JSON circuit needs an "edges" object'),
    ('{"edges": {"m0->m1": {"score": 1}}}', "edge 'm0->m1' has no true/false in_graph"),
    ("# nothing\n", "names no edge of a circuit"),
    ("edge,score\nm0->m1,1\n", "an edges CSV needs columns edge and kept"),
])
def test_unreadable_circuit_files_get_one_line(tmp_path, text, message):
    (tmp_path / "c").write_text(text)
    with pytest.raises(CircuitFileError, match=message):
        read_circuit_file(tmp_path / "c")


def test_names_outside_the_graph_are_refused(tmp_path):
    graph = Graph(Architecture(2, 2, False, False), "qkv")
    (tmp_path / "c.txt").write_text("m0->a1.h0<q>\n")
    with pytest.raises(CircuitFileError, match="'m0->a1.h0<q>' is not an edge of the qkv graph"):
        read_circuit_file(tmp_path / "c.txt").edge_names(graph)
    (tmp_path / "c.json").write_text(json.dumps(dict(cfg=dict(n_layers=3, n_heads=2), edges={"input->logits": True})))
    with pytest.raises(CircuitFileError, match="describes 3 layers x 2 heads, the model has 2 x 2"):
        read_circuit_file(tmp_path / "c.json").edge_names(graph)


@pytest.mark.parametrize("task", [
    ("task=tracr_reverse", "tau=0.001"),  # separate token and positional embeddings
    pytest.param(("task=pairs", f"task.path={EXAMPLE}", "model.pretrained=false", "model.n_layers=2", "model.n_heads=2",
                  "model.d_model=32", "tau=0.0001", "metric=logit_diff"),  # a custom task: no canonical circuit of its own
                 marks=pytest.mark.needs_gpt2_tokenizer),
])
def test_a_runs_circuit_json_read_back_as_ground_truth_gives_tpr_1_fpr_0(tmp_path, task):
    first = run(config(*task), tmp_path / "first")
    saved = tmp_path / "first" / "circuit.json"
    again = run(config(*task, f"task.ground_truth={saved}"), tmp_path / "again")
    assert 0 < first["n_edges_kept"] == again["n_edges_kept"] < first["n_edges_total"]
    assert (again["edge_tpr"], again["edge_fpr"]) == (1.0, 0.0)
    canonical = run(config(*task, "method=canonical", f"task.ground_truth={saved}"), tmp_path / "canonical")
    assert canonical["n_edges_kept"] == first["n_edges_kept"]
    kept = [line.split(",")[0] for line in (tmp_path / "first" / "edges.csv").read_text().splitlines()[1:]
            if line.split(",")[4] == "1"]
    assert kept == [line.split(",")[0] for line in (tmp_path / "canonical" / "edges.csv").read_text().splitlines()[1:]
                    if line.split(",")[4] == "1"]


def test_missing_ground_truth_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="task.ground_truth /nonexistent.json: no such file"):
        run(config("task.ground_truth=/nonexistent.json"), tmp_path / "run")


# ---- the eap library's reader ----------------------------------------------------------------
# What hannamw/EAP-IG's ``Graph.from_json`` (src/eap/graph.py, read at commit 795f560) needs of a file,
# re-derived here without that library: ``Graph.from_model(d["cfg"], neuron_level=True,
# node_scores=True)`` reads cfg's n_layers, n_heads, parallel_attn_mlp and d_model; then for every
# node but "logits", ``g.nodes[name].in_graph = node_dict["in_graph"]`` (a node is a dict); then for
# every edge, ``g.edges[name].score = info["score"]`` (a number: it is written into a float tensor)
# and ``g.edges[name].in_graph = info["in_graph"]`` (a KeyError for a name outside its graph).
def eap_graph_names(cfg: dict) -> tuple[set[str], set[str]]:
    """Node and edge names of ``Graph.from_model(cfg)``: per layer, every earlier writer (input,
    heads, MLPs) into each head's q, k and v, then (with that layer's heads, unless parallel) into
    the MLP; every writer into the logits."""
    writers, edges, nodes = ["input"], set(), {"input", "logits"}
    for layer in range(cfg["n_layers"]):
        heads = [f"a{layer}.h{h}" for h in range(cfg["n_heads"])]
        nodes |= set(heads) | {f"m{layer}"}
        edges |= {f"{w}->{h}<{x}>" for w in writers for h in heads for x in "qkv"}
        if cfg["parallel_attn_mlp"]:
            edges |= {f"{w}->m{layer}" for w in writers}
            writers = writers + heads
        else:
            writers = writers + heads
            edges |= {f"{w}->m{layer}" for w in writers}
        writers.append(f"m{layer}")
    edges |= {f"{w}->logits" for w in writers}
    return nodes, edges


def check_eap_from_json(d: dict) -> dict[str, tuple[float, bool]]:
    """Every read ``Graph.from_json`` makes of ``d``, as assertions; returns the edges it sets."""
    assert all(k in d for k in ("cfg", "nodes", "edges"))
    cfg = d["cfg"]
    for key in ("n_layers", "n_heads", "parallel_attn_mlp", "d_model"):
        assert key in cfg, key
    nodes, edges = eap_graph_names(cfg)
    for name, node_dict in d["nodes"].items():
        if name == "logits":
            continue
        assert name in nodes and isinstance(node_dict["in_graph"], bool)
    out = {}
    for name, info in d["edges"].items():
        assert name in edges, name
        assert isinstance(info["score"], (int, float)) and not isinstance(info["score"], bool)
        assert math.isfinite(info["score"]) and isinstance(info["in_graph"], bool)
        out[name] = (float(info["score"]), info["in_graph"])
    return out


def test_a_gpt2_sized_circuit_json_reads_back_through_eaps_reader(tmp_path):
    from circuitfind.runs.circuit_json import write_circuit_json

    graph = Graph(Architecture(12, 12, True, False), "qkv")
    result = random_result(graph, seed=3)
    result.scores[graph.edge_index["embed->resid_post"]] = math.inf  # a never-scored edge
    write_circuit_json(tmp_path, result, d_model=768)
    d = json.loads((tmp_path / "circuit.json").read_text())  # strict JSON: no NaN or Infinity
    edges = check_eap_from_json(d)
    assert len(edges) == 32_491 and d["cfg"]["d_model"] == 768
    for e in graph.edges:
        if "->" in e.name:
            eap_name = e.name.replace("embed->", "input->").replace("->resid_post", "->logits")
            score, in_graph = edges[eap_name]
            assert in_graph == bool(result.circuit.kept[e.index])
            if math.isfinite(float(result.scores[e.index])):
                assert score == pytest.approx(float(result.scores[e.index]))
    assert edges["input->logits"][0] > max(abs(s) for n, (s, _) in edges.items() if n != "input->logits")


def test_a_hand_written_eap_file_is_read_as_the_library_writes_it():
    """tests/data/eap_tiny.json: one layer, two heads, in ``Graph.to_json``'s layout (every node with
    its in_graph dict, logits included; every edge with score and in_graph)."""
    from pathlib import Path

    path = Path(__file__).parent / "data" / "eap_tiny.json"
    d = json.loads(path.read_text())
    check_eap_from_json(d)
    graph = Graph(Architecture(1, 2, True, False), "qkv")
    assert read_circuit_file(path).edge_names(graph) == {
        "embed->a0.h1<v>", "a0.h1<v>", "a0.h1->m0", "m0->resid_post", "embed->resid_post"}
