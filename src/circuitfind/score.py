"""``circuitfind-score PATH [circuitfind overrides]``: score circuits another tool found (MIB's
circuit track, the ``eap`` library) on a task, through circuitfind's engine.

PATH is a JSON file in the ``eap`` / MIB graph format (``Graph.to_json``; circuitfind's own
``circuit.json`` is one) or a folder of them (MIB's submission layout).  The overrides pick the task,
model, ablation and metric as for ``circuitfind`` (``task=ioi corruption=zero ...``); the graph is
the qkv graph, whose edges are the ``eap`` graph's plus one edge from each head input to its head.

- One file with scores: its edges ranked by |score| (``--signed``: by score), cut between tie groups
  at MIB's ten fractions of the ``eap`` graph's edges, each circuit pruned (the head-input edges
  always kept, as the ``eap`` graph has none), its faithfulness measured on the test split; then CPR
  and CMD.  Also the file's own circuit (its ``in_graph`` edges).
- A folder of files: each file's ``in_graph`` circuit at its own fraction (MIB's "multiple circuits"
  submission), CPR and CMD over the range they cover.

Prints one line per circuit and the areas; ``--out FILE`` writes them as JSON.  A bad file is one
line and exit 2, before any model loads.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from bisect import bisect_right
from pathlib import Path

from .runs.circuit_json import EXTRA_KEY, MIB_INPUT, MIB_OUTPUT, CircuitFileError


class ScoreError(ValueError):
    pass


def read_scored(path: Path) -> dict:
    """{"shape": (L, H) or None, "edges": {eap name: (score, in_graph)}, "exact": {name: (score, in_graph)}}."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ScoreError(f"{path}: not a readable JSON circuit ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("edges"), dict):
        raise ScoreError(f"{path}: a JSON circuit needs an \"edges\" object (the eap / MIB graph format)")
    cfg = data.get("cfg") if isinstance(data.get("cfg"), dict) else {}

    def parse(name, info):
        if not isinstance(info, dict) or not isinstance(info.get("in_graph"), bool):
            raise ScoreError(f"{path}: edge {name!r} has no true/false in_graph")
        score = info.get("score")
        score = math.nan if score is None else float(score)
        return score, info["in_graph"]

    extra = data.get(EXTRA_KEY, {}) if isinstance(data.get(EXTRA_KEY), dict) else {}
    return dict(shape=(cfg["n_layers"], cfg["n_heads"]) if {"n_layers", "n_heads"} <= cfg.keys() else None,
                edges={n: parse(n, i) for n, i in data["edges"].items()},
                exact={n: parse(n, i) for n, i in extra.get("edges", {}).items()})


def _on_graph(graph, circuit: dict, path: Path):
    """(scores, kept, is_resid) over the qkv graph's edges: a residual edge takes its ``eap`` edge's
    score and flag (``input`` stands for both tracr embeddings); a head-input edge (``a3.h0<q>``)
    its exact value from circuitfind's section, else score +inf (always ranked in) and kept when
    any edge into that input is."""
    import torch

    if circuit["shape"] is not None and tuple(circuit["shape"]) != (graph.n_layers, graph.n_heads):
        raise ScoreError(f"{path} describes {circuit['shape'][0]} layers x {circuit['shape'][1]} heads, the "
                         f"model has {graph.n_layers} x {graph.n_heads}")
    names = set(circuit["edges"])
    scores = torch.full((graph.n_edges,), math.nan, dtype=torch.float64)
    kept = torch.zeros(graph.n_edges, dtype=torch.bool)
    resid = torch.tensor(["->" in e.name for e in graph.edges])
    fed: set[str] = set()
    for e in graph.edges:
        if "->" not in e.name:
            continue
        sender = MIB_INPUT if e.sender in graph.embed_names else e.sender
        receiver = MIB_OUTPUT if e.receiver == "resid_post" else e.receiver
        name = f"{sender}->{receiver}"
        if name not in circuit["edges"]:
            raise ScoreError(f"{path} has no edge {name!r} (of the {graph.describe()})")
        names.discard(name)
        scores[e.index], kept[e.index] = circuit["edges"][name]
        if kept[e.index]:
            fed.add(e.receiver)
    if names:
        raise ScoreError(f"{path}: {sorted(names)[0]!r} is not an edge of the {graph.describe()}")
    for e in graph.edges:
        if "->" in e.name:
            continue
        if e.name in circuit["exact"]:
            scores[e.index], kept[e.index] = circuit["exact"][e.name]
        else:
            scores[e.index], kept[e.index] = math.inf, e.name in fed
    return scores, kept, resid


def score_paths(paths: list[Path], overrides: list[str], signed: bool = False, progress: bool = False) -> dict:
    """Score the circuits in ``paths`` on the task ``overrides`` configure; returns the results."""
    from .runs.pipeline import build_problem, compose_config, validate

    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix == ".json")
        elif path.is_file():
            files.append(path)
        else:
            raise ScoreError(f"{path}: no such file or folder")
    if not files:
        raise ScoreError(f"no .json circuit under {', '.join(map(str, paths))}")
    circuits = {f: read_scored(f) for f in files}  # read (and checked) before any model loads
    cfg = compose_config(f"progress={str(progress).lower()}", *overrides)
    validate(cfg)
    if cfg.graph.granularity != "qkv":
        raise ScoreError("circuits in the eap / MIB format are scored on the qkv graph (graph=qkv)")

    import torch

    from .core.faithfulness import MIB_FRACTIONS, areas, describe
    from .core.pruning import prune
    from .methods.ranking import CircuitEvaluator, edge_ranking, tie_tolerance

    problem = build_problem(cfg)
    graph = problem.graph
    test, validation = CircuitEvaluator(problem, "test"), CircuitEvaluator(problem, "validation")
    on_graph = {f: _on_graph(graph, c, f) for f, c in circuits.items()}
    n_mib = int(next(iter(on_graph.values()))[2].sum())  # the eap graph's edges
    out = dict(task=cfg.task.name, corruption=cfg.corruption.name, metric=problem.metric.name,
               formula=describe(problem.metric.name), n_edges_eap=n_mib, split="test", circuits=[])

    def measured(path: Path, kept: torch.Tensor, resid: torch.Tensor, fraction: float | None, label: str):
        kept = prune(graph, kept)
        metric, f = test.faithfulness(kept)
        row = dict(file=str(path), circuit=label, fraction=fraction, n_edges=int((kept & resid).sum()),
                   metric_test=metric, faithfulness_test=f)
        out["circuits"].append(row)
        return row

    for path, (scores, kept, resid) in on_graph.items():
        own = measured(path, kept, resid, int((kept & resid).sum()) / n_mib, "in_graph")
        _, own["faithfulness_validation"] = validation.faithfulness(prune(graph, kept))
    if len(files) == 1:
        path = files[0]
        scores, kept, resid = on_graph[path]
        if torch.isnan(scores[resid]).all():
            raise ScoreError(f"{path} holds no scores to rank")
        ranked = scores.abs() if not signed else scores.clone()
        ranked = torch.nan_to_num(ranked, nan=-math.inf)
        finite = ranked[torch.isfinite(ranked)]
        ranking = edge_ranking(graph, ranked, tie_tolerance(finite, torch.float32))
        # the head-input edges (+inf) form the top group; fractions count the eap graph's edges
        n_always = int((~resid).sum())
        for p in MIB_FRACTIONS:
            cut = max(bisect_right(ranking.sizes, int(p * n_mib) + n_always) - 1, 1 if n_always else 0)
            measured(path, ranking.circuit(cut, pruned=False), resid, p, f"top {100 * p:g}%")
        curve = [r for r in out["circuits"] if r["circuit"].startswith("top")]
    else:
        curve = [r for r in out["circuits"] if r["circuit"] == "in_graph"]
    result = areas([r["fraction"] for r in curve], [r["faithfulness_test"] for r in curve])
    out.update(cpr=result.cpr, cmd=result.cmd, range=result.range_note(), n_points=result.n_points,
               test_forwards=test.n_forwards)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="circuitfind-score", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="a circuit JSON (eap / MIB format) or a folder of them")
    parser.add_argument("overrides", nargs="*", help="circuitfind overrides: task=..., corruption=..., model...")
    parser.add_argument("--signed", action="store_true", help="rank by the signed score, not its absolute value")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    try:
        result = score_paths([args.path], args.overrides, signed=args.signed)
    except (ScoreError, CircuitFileError, ValueError, OSError) as error:
        print(f"circuitfind-score: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"{result['task']} ({result['corruption']} ablation), {result['formula']}, test split:")
    for row in result["circuits"]:
        print(f"  {Path(row['file']).name} {row['circuit']}: {row['n_edges']} of {result['n_edges_eap']} edges, "
              f"{result['metric']} {row['metric_test']:.4g}, faithfulness {row['faithfulness_test']:.3f}")
    note = f" (over {result['range']} only)" if result["range"] else ""
    print(f"CPR {result['cpr']:.3f}, CMD {result['cmd']:.3f}{note}")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
