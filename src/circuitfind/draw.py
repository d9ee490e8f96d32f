"""A picture of a circuit: the kept edges drawn in layers, embeddings at the bottom, output on top.

``circuit.png`` (matplotlib, no Graphviz needed) and ``circuit.dot`` (Graphviz text, for those who
have it).  Heads and MLPs are nodes; a head's q, k and v inputs are small coloured dots just below
it, so an edge into a query reads differently from one into a value; edges are coloured by score.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from .graph import EdgeScores, Graph  # noqa: E402

# a head, or (grouped-query attention) a key/value head shared by a group of query heads
_HEAD = re.compile(r"^a(\d+)\.(h|kv)(\d+)(?:<([qkv])>)?$")
_MLP = re.compile(r"^m(\d+)$")
QKV_COLORS = {"q": "#1f77b4", "k": "#2ca02c", "v": "#d62728"}
QKV_OFFSET = {"q": -0.22, "k": 0.0, "v": 0.22}
MAX_ARROW_HEADS = 2000


def node_position(graph: Graph, node: str) -> tuple[float, float]:
    """x: heads side by side, MLP to their right; y: one band per layer (heads below the MLP)."""
    H = graph.n_heads
    if node in ("embed", "tok_embed", "pos_embed"):
        x = {"embed": (H - 1) / 2, "tok_embed": (H - 1) / 2 - 0.6, "pos_embed": (H - 1) / 2 + 0.6}[node]
        return x, 0.0
    if node == "resid_post":
        return (H - 1) / 2, 2.0 * graph.n_layers + 1.0
    if m := _HEAD.match(node):
        layer, head, which = int(m[1]), int(m[3]), m[4]
        if m[2] == "kv":  # in the middle of its group of query heads
            group = H // graph.n_kv_heads
            head = head * group + (group - 1) / 2
        y = 2.0 * layer + 1.0
        if which is None:
            return float(head), y
        return head + QKV_OFFSET[which], y - 0.45
    if m := _MLP.match(node):
        return H + 0.5, 2.0 * int(m[1]) + 1.8
    raise KeyError(node)


def _edge_color(value: float, low: float, high: float, cmap) -> tuple:
    if not math.isfinite(value):
        value = high if value > 0 else low
    return cmap(0.5 if high <= low else 0.2 + 0.8 * (value - low) / (high - low))


def kept_edges(result: EdgeScores) -> list[tuple[str, str, float]]:
    kept = result.kept.kept.tolist()
    scores = result.scores.tolist()
    return [(e.sender, e.receiver, s) for e, k, s in zip(result.graph.edges, kept, scores) if k]


def draw_circuit(result: EdgeScores, path: Path, title: str = "") -> Path:
    graph = result.graph
    edges = kept_edges(result)
    finite = [s for *_, s in edges if math.isfinite(s)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    cmap = plt.get_cmap("viridis")

    width = max(6.0, 0.9 * (graph.n_heads + 2))
    height = max(4.0, 1.1 * (graph.n_layers + 1))
    fig, ax = plt.subplots(figsize=(min(width, 24), min(height, 24)))
    nodes: set[str] = set()
    segments, colors = [], []
    for sender, receiver, score in edges:
        nodes |= {sender, receiver}
        segments.append([node_position(graph, sender), node_position(graph, receiver)])
        colors.append(_edge_color(score, low, high, cmap))
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=1.6, alpha=0.85, zorder=1))
    # arrow heads at the receiving end: one matplotlib annotation each, so only for a circuit small
    # enough to read (a billion-parameter model's unfinished search keeps ~10^5 edges: minutes each)
    for sender, receiver, _ in (edges if len(edges) <= MAX_ARROW_HEADS else []):
        (x0, y0), (x1, y1) = node_position(graph, sender), node_position(graph, receiver)
        ax.annotate("", xy=(x1, y1), xytext=(x0 + 0.85 * (x1 - x0), y0 + 0.85 * (y1 - y0)),
                    arrowprops=dict(arrowstyle="->", color="0.35", lw=0.8), zorder=2)

    for node in sorted(nodes):
        x, y = node_position(graph, node)
        m = _HEAD.match(node)
        if m and m[4]:
            ax.scatter([x], [y], s=28, color=QKV_COLORS[m[4]], zorder=3, edgecolors="white", linewidths=0.5)
            continue
        face = "#fde0c5" if _MLP.match(node) else "#dde8f6" if m else "#e6e6e6"
        ax.text(x, y, node, ha="center", va="center", fontsize=8, zorder=4,
                bbox=dict(boxstyle="round,pad=0.25", facecolor=face, edgecolor="0.4", linewidth=0.6))

    for which, color in QKV_COLORS.items():
        ax.scatter([], [], s=28, color=color, label=f"{which} input")
    if edges:
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(low, high))
        fig.colorbar(sm, ax=ax, fraction=0.03, pad=0.02, label="edge score")
    ax.legend(loc="upper left", fontsize=7, frameon=False)
    ax.set_xlim(-1.2, graph.n_heads + 1.5)
    ax.set_ylim(-0.7, 2 * graph.n_layers + 1.7)
    ax.set_yticks([0] + [2 * l + 1 for l in range(graph.n_layers)] + [2 * graph.n_layers + 1],
                  ["embed"] + [f"layer {l}" for l in range(graph.n_layers)] + ["output"])
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    count = f"{len(edges)} of {graph.n_edges} edges ({graph.granularity} graph)"
    ax.set_title(f"{title}\n{count}" if title else count, fontsize=10)
    if not edges:
        ax.text((graph.n_heads - 1) / 2, graph.n_layers, "empty circuit", ha="center", color="0.4")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def circuit_dot(result: EdgeScores) -> str:
    """Graphviz text of the kept edges, bottom to top, scores as labels."""
    lines = ["digraph circuit {", "  rankdir=BT;", '  node [shape=box, style="rounded,filled", fillcolor="#dde8f6"];']
    for node in sorted({n for s, r, _ in kept_edges(result) for n in (s, r)}):
        attrs = ""
        if (m := _HEAD.match(node)) and m[4]:
            attrs = f' [shape=point, width=0.12, color="{QKV_COLORS[m[4]]}"]'
        elif _MLP.match(node):
            attrs = ' [fillcolor="#fde0c5"]'
        lines.append(f'  "{node}"{attrs};')
    for sender, receiver, score in kept_edges(result):
        lines.append(f'  "{sender}" -> "{receiver}" [label="{score:.3g}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"
