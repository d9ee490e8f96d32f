"""Circuits as files other tools read: the MIB circuit track's / ``eap`` library's graph JSON, and
ground-truth circuits read back from such a file or from a plain edge list.

The ``eap`` graph (``Graph.to_json`` of hannamw/EAP-IG, which MIB's circuit track exchanges and
reads back with ``Graph.from_json``)::

    {"cfg":   {"n_layers": L, "n_heads": H, "parallel_attn_mlp": false, "d_model": D},
     "nodes": {"input": {"in_graph": true}, "a0.h0": {"in_graph": false}, ..., "logits": {"in_graph": true}},
     "edges": {"input->a0.h0<q>": {"score": 0.12, "in_graph": true}, ..., "m11->logits": {...}}}

``from_json`` builds the graph from ``cfg`` (it needs all four keys: ``d_model`` sizes its neuron
tables), sets each node's ``in_graph`` from its dict (every node but ``logits``) and each edge's
``score`` and ``in_graph`` by name; every edge name must be one of its graph's (GPT-2 small: 32,491),
and every score a number.  An edge a method never scored (infinite score: always kept, e.g. HISP's
ungated ``embed->resid_post``) is written with a finite score above every other, so it still ranks
first.

Names map one to one except at the ends: circuitfind's ``embed`` is their ``input`` and
``resid_post`` their ``logits``; heads (``a3.h0``), their q/k/v inputs (``a3.h0<q>``) and MLPs
(``m2``) are spelled alike.  Their graph always has MLP nodes; for an attention-only model those
edges are written with score 0 and ``in_graph: false``.  Two things of circuitfind's have no
``eap`` counterpart and are kept, exactly, under an extra top-level key ``"circuitfind"`` that the
``eap`` reader ignores: the edges from a head's q/k/v input to the head (``a3.h0<q>``), and, for
models with separate token and positional embeddings (tracr), the edges of ``tok_embed`` and
``pos_embed``, which share the name ``input`` in ``"edges"`` (its score: the larger, in the graph
when either is).  Coarser graphs are written at the qkv graph's resolution: a head-level edge
``s->a3.h0`` gives its score and flag to ``s->a3.h0<q>``, ``<k>`` and ``<v>``; a node-level circuit
keeps an edge when both its ends are kept nodes (score: the smaller of the two).

Reading a circuit (``task.ground_truth=FILE``): such a JSON file (the ``in_graph`` edges; a head's
q/k/v edge counts as in the circuit when an edge into that input does, unless the ``"circuitfind"``
section says otherwise), a run's ``edges.csv`` (the ``kept`` rows), or a text file with one edge name
per line (either spelling; ``#`` starts a comment).  Files are parsed without torch, before any
model loads; the names are checked against the graph once it is known.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..core.files import atomic_write_text

if TYPE_CHECKING:
    from ..core.graph import Graph
    from ..methods.result import MethodResult

CIRCUIT_JSON = "circuit.json"
EXTRA_KEY = "circuitfind"
MIB_INPUT, MIB_OUTPUT = "input", "logits"


# ---- names -------------------------------------------------------------------------------------
def mib_node(node: str) -> str:
    """circuitfind's node name in the ``eap`` spelling."""
    if node in ("embed", "tok_embed", "pos_embed"):
        return MIB_INPUT
    return MIB_OUTPUT if node == "resid_post" else node


def mib_edges(n_layers: int, n_heads: int, parallel: bool = False) -> list[tuple[str, str]]:
    """Every (parent, child) edge of the ``eap`` graph, child spelt with its q/k/v input: the
    residual stream's writers so far into each head input, each MLP (in a parallel block, not its
    own layer's heads), the logits."""
    stream, edges = [MIB_INPUT], []
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        edges += [(p, f"{head}<{x}>") for p in stream for head in heads for x in "qkv"]
        if parallel:
            edges += [(p, f"m{layer}") for p in stream]
        stream += heads
        if not parallel:
            edges += [(p, f"m{layer}") for p in stream]
        stream.append(f"m{layer}")
    return edges + [(p, MIB_OUTPUT) for p in stream]


def _our_receiver(graph: Graph, child: str) -> str:
    """circuitfind's receiver for an ``eap`` child: under grouped-query attention a query head's key
    or value input is its key/value head's (``a3.h5<k>`` -> ``a3.kv1<k>``), one edge for the group."""
    if child == MIB_OUTPUT:
        return "resid_post"
    layer_head, _, which = child.partition("<")
    if graph.arch.grouped and which in ("k>", "v>"):
        layer, head = (int(x) for x in layer_head[1:].split(".h"))
        return graph.input_name(layer, head // (graph.n_heads // graph.n_kv_heads), which[0])
    return child


# ---- writing -----------------------------------------------------------------------------------
def qkv_view(result: MethodResult) -> dict[str, tuple[float, bool]]:
    """Every edge of the qkv graph with the (score, kept) that ``result`` gives it, whatever the
    granularity ``result`` was found at."""
    from ..core.graph import Graph

    graph = result.graph
    own = {e.name: (s, bool(k)) for e, s, k in zip(graph.edges, result.scores.tolist(), result.circuit.kept.tolist())}
    if graph.granularity == "qkv":
        return own
    qkv_graph = Graph(graph.arch, "qkv")
    if graph.granularity == "heads":
        def value(edge):
            if "->" in edge.name:
                return own[f"{edge.sender}->{graph.component(edge.receiver)}"]
            incoming = [own[graph.edges[i].name] for i in graph.incoming.get(edge.receiver, [])]
            return max(s for s, _ in incoming), any(k for _, k in incoming)
    else:  # nodes: an edge is kept when both its ends are kept nodes (resid_post always is)
        def value(edge):
            ends = [own.get(graph.component(n), (math.inf, True)) for n in (edge.sender, edge.receiver)]
            return min(s for s, _ in ends), all(k for _, k in ends)
    return {edge.name: value(edge) for edge in qkv_graph.edges}


def mib_circuit(result: MethodResult, d_model: int | None = None) -> dict:
    """The ``eap`` / MIB graph JSON of ``result`` (see the module docstring); ``d_model``: the
    model's width (``eap``'s reader needs it; omitted when None)."""
    graph = result.graph
    view = qkv_view(result)
    finite = [abs(s) for s, _ in view.values() if math.isfinite(s)]
    never_scored = 1.0 + 2.0 * max(finite, default=0.0)
    senders_of_input = graph.embed_names
    edges, exact = {}, {}
    all_edges = mib_edges(graph.n_layers, graph.n_heads, graph.arch.parallel)
    for parent, child in all_edges:
        ours = [f"{s}->{_our_receiver(graph, child)}"
                for s in (senders_of_input if parent == MIB_INPUT else (parent,))]
        found = [view[name] for name in ours if name in view]  # none: an MLP of an attention-only model
        score = max((s for s, _ in found), default=0.0)
        edges[f"{parent}->{child}"] = dict(score=score if math.isfinite(score) else math.copysign(never_scored, score),
                                           in_graph=any(k for _, k in found))
        if len(ours) > 1:
            exact.update({name: view[name] for name in ours})
    exact.update({name: value for name, value in view.items() if "->" not in name})
    nodes = {MIB_INPUT: False, MIB_OUTPUT: False}
    nodes.update({child.split("<")[0]: False for _, child in all_edges})
    for name, info in edges.items():
        if info["in_graph"]:
            parent, child = name.split("->")
            nodes[parent] = nodes[child.split("<")[0]] = True
    nodes[MIB_OUTPUT] = True  # eap's logits node is always in the graph
    cfg = dict(n_layers=graph.n_layers, n_heads=graph.n_heads, parallel_attn_mlp=graph.arch.parallel)
    if d_model is not None:
        cfg["d_model"] = int(d_model)
    return dict(
        cfg=cfg,
        nodes={name: dict(in_graph=flag) for name, flag in nodes.items()},
        edges=edges,
        **{EXTRA_KEY: dict(granularity=graph.granularity,
                           edges={n: dict(score=_json_number(s), in_graph=k) for n, (s, k) in exact.items()})},
    )


def _json_number(x: float) -> float | None:
    """Scores as JSON numbers: infinities (an edge a method never scored) become null, as ``eap``
    writes an unscored edge."""
    return float(x) if math.isfinite(x) else None


def write_circuit_json(folder: Path, result: MethodResult, d_model: int | None = None) -> None:
    atomic_write_text(Path(folder) / CIRCUIT_JSON, json.dumps(mib_circuit(result, d_model), allow_nan=False) + "\n")


# ---- reading -----------------------------------------------------------------------------------
class CircuitFileError(ValueError):
    """A circuit file that cannot be read; one line naming the file."""


@dataclass
class CircuitFile:
    """A parsed circuit: edge names as the file spells them, and (MIB JSON with circuitfind's section)
    the exact flags of edges the ``eap`` names cannot express.  A file that names no head's q/k/v edge
    (``a3.h0<q>``, as ``eap`` files never do) has one wherever an edge into that input is named."""

    path: Path
    edges: list[str]
    exact: dict[str, bool] = field(default_factory=dict)
    shape: tuple[int, int] | None = None  # (n_layers, n_heads) a JSON file declares

    def edge_names(self, graph: Graph) -> set[str]:
        """The circuit as edge names of ``graph`` (which must be a qkv graph)."""
        if graph.granularity != "qkv":
            raise ValueError("ground-truth circuits are named on the qkv graph")
        if self.shape is not None and self.shape != (graph.n_layers, graph.n_heads):
            raise CircuitFileError(f"{self.path} describes {self.shape[0]} layers x {self.shape[1]} heads, the "
                                   f"model has {graph.n_layers} x {graph.n_heads}")
        names = set()
        for name in self.edges:
            names |= set(_our_names(name, graph, self.path))
        if all("->" in name for name in self.edges):  # no q/k/v edge named: an input is used when reached
            names |= {graph.edges[i].receiver for i in range(graph.n_edges)
                      if "->" in graph.edges[i].name and graph.edges[i].name in names
                      and "<" in graph.edges[i].receiver}
        for name, kept in self.exact.items():
            if name not in graph.edge_index:
                raise CircuitFileError(f"{self.path}: {name!r} is not an edge of the {graph.describe()}")
            (names.add if kept else names.discard)(name)
        return names


def _our_names(name: str, graph: Graph, path: Path) -> list[str]:
    """A file's edge name in circuitfind's spelling (``input`` may stand for two embeddings)."""
    if "->" not in name:
        candidates = [name]
    else:
        sender, receiver = name.split("->", 1)
        senders = graph.embed_names if sender == MIB_INPUT else (sender,)
        receiver = "resid_post" if receiver == MIB_OUTPUT else receiver
        candidates = [f"{s}->{receiver}" for s in senders]
    for candidate in candidates:
        if candidate not in graph.edge_index:
            raise CircuitFileError(f"{path}: {name!r} is not an edge of the {graph.describe()}")
    return candidates


def read_circuit_file(path: str | Path) -> CircuitFile:
    """Parse a circuit file (MIB / ``eap`` JSON, a run's ``edges.csv``, or one edge name per line)."""
    path = Path(path)
    if not path.is_file():
        raise CircuitFileError(f"task.ground_truth {path}: no such file" if not path.exists() else
                               f"task.ground_truth {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise CircuitFileError(f"task.ground_truth {path} is not UTF-8 text") from None
    if text.lstrip().startswith("{"):
        circuit = _read_json(path, text)
    elif text.lstrip().startswith("edge,") or text.lstrip().startswith("edge\t"):
        circuit = _read_edges_csv(path, text)
    else:
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        circuit = CircuitFile(path, [line for line in lines if line])
    if not circuit.edges and not any(circuit.exact.values()):
        raise CircuitFileError(f"task.ground_truth {path} names no edge of a circuit")
    return circuit


def _read_json(path: Path, text: str) -> CircuitFile:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise CircuitFileError(f"task.ground_truth {path}: not JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(data.get("edges"), dict):
        raise CircuitFileError(f"task.ground_truth {path}: a JSON circuit needs an \"edges\" object "
                               "(the eap / MIB graph format)")
    cfg = data.get("cfg") if isinstance(data.get("cfg"), dict) else {}
    shape = (cfg["n_layers"], cfg["n_heads"]) if {"n_layers", "n_heads"} <= cfg.keys() else None
    edges = [name for name, info in data["edges"].items() if _in_graph(path, name, info)]
    extra = data.get(EXTRA_KEY, {}).get("edges", {}) if isinstance(data.get(EXTRA_KEY), dict) else {}
    exact = {name: _in_graph(path, name, info) for name, info in extra.items()}
    return CircuitFile(path, edges, exact, shape=shape)


def _in_graph(path: Path, name: str, info) -> bool:
    flag = info.get("in_graph") if isinstance(info, dict) else info
    if not isinstance(flag, bool):
        raise CircuitFileError(f"task.ground_truth {path}: edge {name!r} has no true/false in_graph")
    return flag


def _read_edges_csv(path: Path, text: str) -> CircuitFile:
    rows = list(csv.DictReader(text.splitlines()))
    if rows and "kept" not in rows[0]:
        raise CircuitFileError(f"task.ground_truth {path}: an edges CSV needs columns edge and kept")
    try:
        return CircuitFile(path, [r["edge"] for r in rows if int(r["kept"])])
    except (TypeError, ValueError):
        raise CircuitFileError(f"task.ground_truth {path}: kept must be 0 or 1 in every row") from None


def ground_truth(path: str | Path) -> Callable[[Graph], set[str]]:
    """A task's ``ground_truth_edges`` from a circuit file, read (and its format checked) now."""
    return read_circuit_file(path).edge_names
