from circuitfind.plots.circuit import circuit_dot, draw_circuit, node_position
from circuitfind.core.graph import Architecture, Graph
from circuitfind.methods.result import MethodResult
from circuitfind.methods import Problem, get_method
from circuitfind.tasks import build_task


def test_tracr_reverse_picture_shows_exactly_its_15_edges(tmp_path):
    task = build_task("tracr_reverse", seed=0)
    graph = Graph(Architecture.from_config(task.model.cfg, split_embed=True))
    result = get_method("acdc")(Problem(task, graph, "zero", task.metric(None), progress=False), tau=0.001)
    dot = circuit_dot(result)
    edge_lines = [line for line in dot.splitlines() if "->" in line]
    assert len(edge_lines) == 15
    kept = {(e.sender, e.receiver) for e in graph.edges if result.circuit.kept[e.index]}
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
    draw_circuit(MethodResult(graph, empty.values.double(), empty), tmp_path / "c.png")
    assert "->" not in circuit_dot(MethodResult(graph, empty.values.double(), empty))


# ---- layout numbers (what the picture shows, checked on the drawn figure) -------------------
import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from circuitfind.plots.circuit import DETAIL_MAX_EDGES, circuit_figure, kept_edges, summary_counts, x_extent  # noqa: E402
from circuitfind.core.graph import EdgeMask  # noqa: E402


def scored(graph, keep, scores):
    """MethodResult keeping the edges where ``keep(edge)``, scored ``scores(edge)``."""
    kept = torch.tensor([bool(keep(e)) for e in graph.edges])
    values = torch.tensor([float(scores(e)) for e in graph.edges], dtype=torch.float64)
    return MethodResult(graph, values, EdgeMask(graph, kept))


def inside_figure(fig, artist) -> bool:
    if hasattr(artist, "get_text") and not artist.get_text():
        return True  # an empty label takes no room
    box, frame = artist.get_window_extent(fig.canvas.get_renderer()), fig.bbox
    return box.x0 >= frame.x0 - 1 and box.y0 >= frame.y0 - 1 and box.x1 <= frame.x1 + 1 and box.y1 <= frame.y1 + 1


def test_each_layers_mlp_has_its_own_column_and_skip_edges_clear_the_nodes_they_pass():
    graph = Graph(Architecture(n_layers=3, n_heads=2, has_mlps=True, split_embed=False))
    mlps = [node_position(graph, f"m{l}") for l in range(3)]
    assert len({x for x, _ in mlps}) == 3
    heads_right = max(node_position(graph, f"a{l}.h1<v>")[0] for l in range(3))
    assert min(x for x, _ in mlps) > heads_right  # MLP columns to the right of every head
    skips = {("m0", "m2"): "m1", ("a0.h0", "a2.h0<v>"): "a1.h0", ("embed", "resid_post"): "a1.h0"}
    result = scored(graph, lambda e: (e.sender, e.receiver) in skips, lambda e: 1.0)
    lines = circuit_figure(result).ax.collections[0].get_segments()
    assert len(lines) == 3
    for path in lines:
        (start, end) = (tuple(path[0]), tuple(path[-1]))
        (sender, receiver), passed = next((k, v) for k, v in skips.items()
                                          if (node_position(graph, k[0]), node_position(graph, k[1])) == (start, end))
        gap = min(math.dist(point, node_position(graph, passed)) for point in path)
        assert gap > 0.3, (sender, receiver, passed, gap)  # a node box is ~0.3 wide each side of its centre


def test_the_drawing_uses_its_width_and_keeps_its_text_inside():
    graph = Graph(Architecture(n_layers=3, n_heads=1, has_mlps=True, split_embed=True))  # tracr-reverse's shape
    result = scored(graph, lambda e: True, lambda e: e.index)
    drawing = circuit_figure(result, "a title long enough to need the room it gets")
    fig, ax = drawing.fig, drawing.ax
    fig.canvas.draw()
    left, right = x_extent(graph)
    span = ax.transData.transform([(left, 0), (right, 0)])[:, 0]
    assert (span[1] - span[0]) / fig.bbox.width > 0.55  # nodes spread over most of the picture
    for artist in [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_yticklabels(), *ax.texts]:
        assert inside_figure(fig, artist), artist
    assert drawing.has_colorbar and drawing.has_qkv_legend


def test_unscored_edges_are_grey_and_dashed_and_one_score_needs_no_colour_bar():
    graph = Graph(Architecture(n_layers=2, n_heads=2, has_mlps=False, split_embed=False))
    result = scored(graph, lambda e: True, lambda e: math.inf if e.index % 3 == 0 else 1.0)
    drawing = circuit_figure(result)
    lines = [c for c in drawing.ax.collections if isinstance(c, LineCollection)]
    assert len(lines) == 1  # one collection, not an artist per edge
    colors = lines[0].get_colors()
    assert len(colors) == graph.n_edges
    grey = [tuple(c[:3]) for i, c in enumerate(colors) if i % 3 == 0]
    assert set(grey) == {(0.6, 0.6, 0.6)}
    assert all(tuple(c[:3]) != (0.6, 0.6, 0.6) for i, c in enumerate(colors) if i % 3)
    assert not drawing.has_colorbar  # every scored edge scores 1: no scale to read
    labels = [t.get_text() for t in drawing.ax.get_legend().get_texts()]
    assert "not scored" in labels


def test_node_graph_draws_nodes_without_qkv_legend_or_colour_bar():
    graph = Graph(Architecture(n_layers=2, n_heads=2, has_mlps=True, split_embed=False), "nodes")
    result = scored(graph, lambda e: e.sender in ("embed", "a1.h0"), lambda e: 0.5)
    drawing = circuit_figure(result)
    assert drawing.kind == "nodes" and not drawing.has_colorbar and not drawing.has_qkv_legend
    assert drawing.ax.get_legend() is None and len(drawing.fig.axes) == 1
    assert "2 of 7 nodes kept" in drawing.ax.get_title()
    assert "->" not in circuit_dot(result)


def test_large_circuits_are_drawn_as_block_counts_unless_forced(tmp_path):
    graph = Graph(Architecture(n_layers=6, n_heads=12, has_mlps=True, split_embed=False))
    result = scored(graph, lambda e: e.index % 2 == 0, lambda e: e.index)
    n_kept = result.circuit.n_kept
    assert n_kept > DETAIL_MAX_EDGES
    assert circuit_figure(result).kind == "summary"
    senders, receivers, counts, inside = summary_counts(graph, kept_edges(result))
    assert counts.sum() + inside == n_kept and senders[0] == "embed" and receivers[-1] == "output"
    assert counts[receivers.index("m0"), senders.index("a0")] == sum(
        1 for s, r, _ in kept_edges(result) if s.startswith("a0.") and r == "m0")
    assert counts[receivers.index("a0"), senders.index("m0")] == 0  # nothing reads from later layers
    forced = circuit_figure(result, detail=True)
    assert forced.kind == "detail" and len(forced.ax.collections[0].get_segments()) == n_kept
    png = draw_circuit(result, tmp_path / "circuit.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and [p.name for p in tmp_path.iterdir()] == ["circuit.png"]


def test_untested_edges_have_an_empty_score_in_edges_csv(tmp_path):
    import csv

    from circuitfind.runs.pipeline import run
    from conftest import config

    summary = run(config("corruption=zero", "method.max_edge_tests=5"), tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "edges.csv")))
    assert not any("inf" in row["score"] for row in rows)
    tested = [row for row in rows if row["score"]]
    assert len(tested) == summary["n_edge_tests"] == 5  # the others were never reached
    assert all(row["kept"] == "1" for row in rows if not row["score"])  # untested edges stay in the circuit
    assert (tmp_path / "circuit.png").is_file() and not list(tmp_path.glob(".*tmp*"))


def test_draw_option_is_checked_before_anything_loads():
    from circuitfind.runs.pipeline import ConfigError, validate
    from conftest import config

    with pytest.raises(ConfigError, match="draw must be auto, true or false, got 'maybe'"):
        validate(config("draw=maybe"))
    validate(config("draw=false"))
