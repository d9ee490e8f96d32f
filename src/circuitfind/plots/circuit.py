"""A picture of a circuit: the kept edges drawn in layers, embeddings at the bottom, output on top.

``circuit.png`` (matplotlib, no Graphviz needed) and ``circuit.dot`` (Graphviz text, for those who
have it).  Heads and MLPs are nodes; a head's q, k and v inputs are small coloured dots just below
it, so an edge into a query reads differently from one into a value.  Every edge runs upward (a
sender always writes before its receiver reads), so no arrow heads are needed.

Layout: heads of a layer side by side, and each layer's MLP in a column of its own to their right,
one column further right per layer; an edge that skips layers bows out of the straight line (a
parabola, the further the more it skips), so ``m0 -> m2`` or ``a0.h0 -> a2.h0<v>`` never hides behind
the nodes and edges of the layers it skips.  Edges are coloured by score when their scores differ; an edge
the method never scored (ACDC's ``max_edge_tests`` reached, an SP/HISP edge without a gate) is drawn
in neutral grey, dashed.  The node graph has no edges: its kept nodes are drawn, the others faint.

A circuit of more than ``DETAIL_MAX_EDGES`` kept edges would be a hairball: it is drawn as a
summary instead, one cell per (sender block, receiver block) holding the number of kept edges from
that layer's heads (or MLP) into that one's (``draw=true`` forces the detailed drawing).  All edges
are one ``LineCollection`` and the file is written atomically, so drawing stays fast and a crash
never leaves half a picture.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ..core.files import atomic_write  # noqa: E402
from ..core.graph import Graph  # noqa: E402
from ..methods.result import MethodResult  # noqa: E402

# a head, or (grouped-query attention) a key/value head shared by a group of query heads
_HEAD = re.compile(r"^a(\d+)\.(?P<kind>h|kv)(?P<head>\d+)(?:<(?P<which>[qkv])>)?$")
_MLP = re.compile(r"^m(\d+)$")
QKV_COLORS = {"q": "#1f77b4", "k": "#2ca02c", "v": "#d62728"}
QKV_OFFSET = {"q": -0.22, "k": 0.0, "v": 0.22}
UNSCORED_COLOR = "0.6"
MLP_COLUMN_STEP = 0.8  # x distance between the MLP columns of consecutive layers
BOW_PER_LAYER = 0.2  # sideways bulge of an edge per unit of height beyond one layer (capped)
MAX_BOW = 0.6
DETAIL_MAX_EDGES = 300  # above this many kept edges (draw=auto) the picture is the block summary
DRAW_OPTIONS = ("auto", True, False)


def check_draw_option(value) -> None:
    if value not in DRAW_OPTIONS:
        raise ValueError(f"draw must be auto, true or false, got {value!r}")


def node_position(graph: Graph, node: str) -> tuple[float, float]:
    """x: heads side by side, each layer's MLP in its own column to their right; y: one band per
    layer (q/k/v inputs, then heads, then the MLP)."""
    H = graph.n_heads
    centre = (H - 1) / 2
    if node in ("embed", "tok_embed", "pos_embed"):
        return {"embed": centre, "tok_embed": centre - 0.6, "pos_embed": centre + 0.6}[node], 0.0
    if node == "resid_post":
        return centre, 2.0 * graph.n_layers + 1.0
    if m := _HEAD.match(node):
        layer, head, which = int(m[1]), int(m["head"]), m["which"]
        if m["kind"] == "kv":  # in the middle of its group of query heads
            group = H // graph.n_kv_heads
            head = head * group + (group - 1) / 2
        y = 2.0 * layer + 1.0
        if which is None:
            return float(head), y
        return head + QKV_OFFSET[which], y - 0.45
    if m := _MLP.match(node):
        layer = int(m[1])
        return H - 0.2 + MLP_COLUMN_STEP * layer, 2.0 * layer + 1.8
    raise KeyError(node)


def x_extent(graph: Graph) -> tuple[float, float]:
    """The leftmost and rightmost x any node of ``graph`` can take."""
    right = graph.n_heads - 1 + QKV_OFFSET["v"]
    if graph.arch.has_mlps:
        right = max(right, node_position(graph, f"m{graph.n_layers - 1}")[0])
    left = min(QKV_OFFSET["q"], (graph.n_heads - 1) / 2 - (0.6 if graph.arch.split_embed else 0.0))
    return left, right


def edge_path(start: tuple[float, float], end: tuple[float, float], n_points: int = 13) -> np.ndarray:
    """The drawn line of an edge: straight across one layer, bowed to the right (seen from the
    sender) by a parabola when it skips layers, so it clears the nodes it passes."""
    (x0, y0), (x1, y1) = start, end
    length = math.hypot(x1 - x0, y1 - y0)
    t = np.linspace(0.0, 1.0, n_points)[:, None]
    line = (1 - t) * np.array([x0, y0]) + t * np.array([x1, y1])
    bow = min(BOW_PER_LAYER * max(0.0, abs(y1 - y0) - 1.6), MAX_BOW)
    if bow == 0.0 or length == 0.0:
        return line
    normal = np.array([y1 - y0, -(x1 - x0)]) / length  # right of the direction of travel
    return line + 4 * t * (1 - t) * bow * normal


def kept_edges(result: MethodResult) -> list[tuple[str, str, float]]:
    kept = result.circuit.kept.tolist()
    scores = result.scores.tolist()
    return [(e.sender, e.receiver, s) for e, k, s in zip(result.graph.edges, kept, scores) if k]


@dataclass
class Drawing:
    """A circuit's figure before it is saved: ``kind`` is ``detail``, ``nodes`` or ``summary``."""

    fig: matplotlib.figure.Figure
    ax: matplotlib.axes.Axes
    kind: str
    has_colorbar: bool
    has_qkv_legend: bool


def circuit_figure(result: MethodResult, title: str = "", detail: bool | None = None) -> Drawing:
    """The figure of ``result``'s circuit (``detail``: None picks by size, True forces the detailed
    drawing, False the block summary)."""
    graph = result.graph
    edges = kept_edges(result)
    if graph.granularity == "nodes":
        return _node_figure(result, title)
    if detail is None:
        detail = len(edges) <= DETAIL_MAX_EDGES
    return _edge_figure(graph, edges, title) if detail else _summary_figure(graph, edges, title)


def draw_circuit(result: MethodResult, path: Path, title: str = "", detail: bool | None = None) -> Path:
    drawing = circuit_figure(result, title, detail)
    path = Path(path)
    atomic_write(path, lambda tmp: drawing.fig.savefig(tmp, dpi=130, format="png"))
    plt.close(drawing.fig)
    return path


def _figure(graph: Graph, xs: list[float], extra_width: float = 0.0):
    """A figure as wide as the columns the drawn nodes (x positions ``xs``) occupy, no wider."""
    left, right = (min(xs), max(xs)) if xs else x_extent(graph)
    pad = 0.45  # room for half a node label beyond the outermost columns
    per_unit = 1.2 if right - left < 10 else 0.9  # inches per column unit; wide models get less
    width = min(max(4.0, per_unit * (right - left + 2 * pad) + 1.0 + extra_width), 30.0)
    height = min(max(4.0, 0.85 * (graph.n_layers + 1) + 1.4), 24.0)
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    ax.set_xlim(left - pad, right + pad)
    ax.set_ylim(-0.7, 2 * graph.n_layers + 1.7)
    ax.set_yticks([0] + [2 * l + 1 for l in range(graph.n_layers)] + [2 * graph.n_layers + 1],
                  ["embed"] + [f"layer {l}" for l in range(graph.n_layers)] + ["output"])
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _label_node(ax, graph: Graph, node: str, faint: bool = False) -> None:
    x, y = node_position(graph, node)
    m = _HEAD.match(node)
    if m and m["which"]:
        ax.scatter([x], [y], s=28, color=QKV_COLORS[m["which"]], zorder=3, edgecolors="white", linewidths=0.5)
        return
    face = "white" if faint else "#fde0c5" if _MLP.match(node) else "#dde8f6" if m else "#e6e6e6"
    ax.text(x, y, node, ha="center", va="center", fontsize=8, zorder=4, color="0.65" if faint else "black",
            bbox=dict(boxstyle="round,pad=0.25", facecolor=face, edgecolor="0.75" if faint else "0.4", linewidth=0.6))


def _edge_figure(graph: Graph, edges: list[tuple[str, str, float]], title: str) -> Drawing:
    scored = [s for *_, s in edges if math.isfinite(s)]
    low, high = (min(scored), max(scored)) if scored else (0.0, 0.0)
    varied = high > low  # one score for every edge (canonical, SP's kept gates...) needs no colour scale
    cmap = plt.get_cmap("viridis")
    position = {n: node_position(graph, n) for n in {n for s, r, _ in edges for n in (s, r)}}
    fig, ax = _figure(graph, [x for x, _ in position.values()], extra_width=1.2 if varied else 0.0)
    segments = [edge_path(position[s], position[r]) for s, r, _ in edges]
    colors = [cmap(0.15 + 0.85 * (v - low) / (high - low)) if varied and math.isfinite(v)
              else UNSCORED_COLOR if not math.isfinite(v) else cmap(0.35) for *_, v in edges]
    styles = ["solid" if math.isfinite(v) else (0, (3, 2)) for *_, v in edges]
    ax.add_collection(LineCollection(segments, colors=colors, linestyles=styles, linewidths=1.6, alpha=0.85,
                                     zorder=1))
    for node in sorted(position):
        _label_node(ax, graph, node)

    handles = []
    if graph.granularity == "qkv" and any(_HEAD.match(r) and _HEAD.match(r)["which"] for _, r, _ in edges):
        handles += [Line2D([], [], ls="", marker="o", color=c, label=f"{w} input") for w, c in QKV_COLORS.items()]
    if len(scored) < len(edges):
        handles.append(Line2D([], [], color=UNSCORED_COLOR, ls=(0, (3, 2)), label="not scored"))
    if handles:
        ax.legend(handles=handles, loc="upper left", fontsize=7, frameon=False)
    if varied:
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(low, high))
        fig.colorbar(sm, ax=ax, fraction=0.04, pad=0.01, label="edge score")
    count = f"{len(edges)} of {graph.n_edges} edges ({graph.granularity} graph)"
    ax.set_title(f"{title}\n{count}" if title else count, fontsize=10)
    if not edges:
        ax.text((graph.n_heads - 1) / 2, graph.n_layers, "empty circuit", ha="center", color="0.4")
    return Drawing(fig, ax, "detail", varied, bool(handles) and graph.granularity == "qkv")


def _node_figure(result: MethodResult, title: str) -> Drawing:
    graph = result.graph
    fig, ax = _figure(graph, [node_position(graph, e.sender)[0] for e in graph.edges])
    kept = {e.sender for e, k in zip(graph.edges, result.circuit.kept.tolist()) if k}
    for edge in graph.edges:
        _label_node(ax, graph, edge.sender, faint=edge.sender not in kept)
    _label_node(ax, graph, "resid_post")
    count = f"{len(kept)} of {graph.n_edges} nodes kept (node graph; faint: removed)"
    ax.set_title(f"{title}\n{count}" if title else count, fontsize=10)
    return Drawing(fig, ax, "nodes", False, False)


def block_of(graph: Graph, node: str) -> str:
    """The summary's block of a node: ``embed``, ``a<layer>`` (heads and their inputs), ``m<layer>``
    or ``output``."""
    if node in ("embed", "tok_embed", "pos_embed"):
        return "embed"
    if node == "resid_post":
        return "output"
    if m := _HEAD.match(node):
        return f"a{m[1]}"
    return node  # an MLP is its own block


def summary_counts(graph: Graph, edges: list[tuple[str, str, float]]) -> tuple[list[str], list[str], np.ndarray, int]:
    """(sender blocks, receiver blocks, kept-edge counts [receiver, sender], q/k/v-to-head edges kept)."""
    layers = [[f"a{l}"] + ([f"m{l}"] if graph.arch.has_mlps else []) for l in range(graph.n_layers)]
    blocks = [b for layer in layers for b in layer]
    senders, receivers = ["embed"] + blocks, blocks + ["output"]
    counts = np.zeros((len(receivers), len(senders)), dtype=int)
    inside = 0
    for sender, receiver, _ in edges:
        if block_of(graph, sender) == block_of(graph, receiver):  # a head's q/k/v input into the head
            inside += 1
            continue
        counts[receivers.index(block_of(graph, receiver)), senders.index(block_of(graph, sender))] += 1
    return senders, receivers, counts, inside


def _summary_figure(graph: Graph, edges: list[tuple[str, str, float]], title: str) -> Drawing:
    senders, receivers, counts, inside = summary_counts(graph, edges)
    side = min(max(5.0, 0.36 * len(senders) + 2.5), 20.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side), layout="constrained")
    shown = np.ma.masked_equal(counts, 0)
    image = ax.imshow(shown, origin="lower", cmap="viridis", norm=matplotlib.colors.LogNorm(1, max(counts.max(), 2)),
                      aspect="auto")
    for (row, col), n in np.ndenumerate(counts):
        if n:
            ax.text(col, row, str(n), ha="center", va="center", fontsize=6 if len(senders) > 12 else 8,
                    color="white" if n < counts.max() ** 0.5 else "black")
    ax.set_xticks(range(len(senders)), senders, rotation=90, fontsize=7)
    ax.set_yticks(range(len(receivers)), receivers, fontsize=7)
    ax.set(xlabel="sender block (heads of a layer, or its MLP)", ylabel="receiver block")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.01, label="kept edges")
    count = (f"{len(edges)} of {graph.n_edges} edges ({graph.granularity} graph), kept edges per block pair"
             + (f"; {inside} q/k/v-to-head" if inside else ""))
    ax.set_title(f"{title}\n{count}" if title else count, fontsize=10)
    return Drawing(fig, ax, "summary", True, False)


def circuit_dot(result: MethodResult) -> str:
    """Graphviz text of the kept edges, bottom to top, scores as labels (none where not scored)."""
    lines = ["digraph circuit {", "  rankdir=BT;", '  node [shape=box, style="rounded,filled", fillcolor="#dde8f6"];']
    for node in sorted({n for s, r, _ in kept_edges(result) for n in (s, r)}):
        attrs = ""
        if (m := _HEAD.match(node)) and m["which"]:
            attrs = f' [shape=point, width=0.12, color="{QKV_COLORS[m["which"]]}"]'
        elif _MLP.match(node):
            attrs = ' [fillcolor="#fde0c5"]'
        lines.append(f'  "{node}"{attrs};')
    for sender, receiver, score in kept_edges(result):
        if sender == receiver:  # the node graph: a node, not an edge
            continue
        label = f' [label="{score:.3g}"]' if math.isfinite(score) else ' [style=dashed]'
        lines.append(f'  "{sender}" -> "{receiver}"{label};')
    lines.append("}")
    return "\n".join(lines) + "\n"
