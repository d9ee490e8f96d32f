from circuitfind.draw import circuit_dot, draw_circuit, node_position
from circuitfind.graph import Architecture, EdgeScores, Graph
from circuitfind.methods import Problem, get_method
from circuitfind.tasks import build_task


def test_tracr_reverse_picture_shows_exactly_its_15_edges(tmp_path):
    task = build_task("tracr_reverse", seed=0)
    graph = Graph(Architecture.from_config(task.model.cfg, split_embed=True))
    result = get_method("acdc")(Problem(task, graph, "zero", task.metric(None), progress=False), tau=0.001)
    dot = circuit_dot(result)
    edge_lines = [line for line in dot.splitlines() if "->" in line]
    assert len(edge_lines) == 15
    kept = {(e.sender, e.receiver) for e in graph.edges if result.kept.kept[e.index]}
    assert {(line.split('"')[1], line.split('"')[3]) for line in edge_lines} == kept
    png = draw_circuit(result, tmp_path / "circuit.png", "tracr_reverse")
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_layout_puts_embeddings_below_heads_below_the_output():
    graph = Graph(Architecture(n_layers=3, n_heads=4, has_mlps=True, split_embed=False))
    ys = [node_position(graph, n)[1] for n in ("embed", "a0.h1<q>", "a0.h1", "m0", "a1.h0", "m2", "resid_post")]
    assert ys == sorted(ys) and len(set(ys)) == len(ys)
    qkv_x = [node_position(graph, f"a2.h3<{w}>")[0] for w in "qkv"]
    assert len(set(qkv_x)) == 3  # q, k and v inputs are told apart


def test_an_empty_circuit_still_draws(tmp_path):
    graph = Graph(Architecture(n_layers=1, n_heads=1, has_mlps=False, split_embed=False))
    empty = graph.full_mask()
    empty.values[:] = False
    draw_circuit(EdgeScores(graph, empty.values.double(), empty), tmp_path / "c.png")
    assert "->" not in circuit_dot(EdgeScores(graph, empty.values.double(), empty))
