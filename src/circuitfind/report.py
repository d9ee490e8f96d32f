"""``circuitfind-report DIR [DIR ...] [--out OUT]``: run folders -> ROC points, AUC table, plots.

Reads every run folder under the given folders (recursively) and writes to OUT (default: the first
DIR):

    roc_points.csv          one row per circuit: a run's own, or each row of a one-run curve (HISP's
                            curve.csv): task, method, corruption, metric, parameter, n_edges,
                            edge/node TPR and FPR, test_metric (the circuit's metric on the test split)
    auc.csv                 per task, method, corruption, metric and level (edge, node): the area
                            under the pessimistic ROC staircase (``evaluation.roc_auc``)
    roc_<task>.png          the ROC curves, one line per method, one panel per corruption and level
    metric_vs_edges_<task>.png   test metric against the number of edges kept

Folders with no summary.json are unfinished (or failed: error.txt) runs; they are counted and
skipped.  A folder is a run folder when it holds summary.json, edges.csv, error.txt or .hydra/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import pandas as pd  # noqa: E402

from .evaluation import pareto_front, roc_auc, roc_points, roc_staircase  # noqa: E402
from .methods.spec import method_labels, method_rank, spec_of_label  # noqa: E402
from .rundir import SUMMARY  # noqa: E402

ROC_COLUMNS = ["task", "method", "corruption", "metric", "parameter", "n_edges", "edge_tpr", "edge_fpr",
               "node_tpr", "node_fpr", "test_metric", "parameter_name", "graph", "seed", "run"]
AUC_COLUMNS = ["task", "method", "corruption", "metric", "level", "auc", "n_points", "graph"]
CURVE_KEY = ["task", "method", "corruption", "metric", "graph"]  # one ROC curve per group
LEVELS = ("edge", "node")
# Curves often coincide (every method at TPR 1, FPR 0): wide solid under narrower broken lines.
_LINE_STYLES = [("-", 4.0), ("--", 2.6), ("-.", 1.8), (":", 1.6)]


class ReportError(ValueError):
    pass


# ---- reading run folders ---------------------------------------------------------------------
def find_run_folders(roots: list[Path]) -> tuple[list[Path], list[Path], list[Path]]:
    """(complete runs, unfinished runs, failed runs) under ``roots``, each folder once."""
    complete, unfinished, failed = [], [], []
    seen: set[Path] = set()
    for root in roots:
        if not root.is_dir():
            raise ReportError(f"{root} is not a folder")
        for current, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != ".hydra")  # Hydra's own config copy, not a run
            folder = Path(current).resolve()
            if folder in seen:
                continue
            seen.add(folder)
            if SUMMARY in files:
                complete.append(folder)
            elif "error.txt" in files:
                failed.append(folder)
            elif "edges.csv" in files or (folder / ".hydra").is_dir():
                unfinished.append(folder)
    return complete, unfinished, failed


def _rate(value):
    return None if value is None else float(value)


def run_points(folder: Path) -> list[dict]:
    """The ROC points of one complete run folder: its own circuit, or every row of its curve."""
    summary = json.loads((folder / SUMMARY).read_text())
    method = summary.get("method_label") or summary["method"]  # e.g. sp_edges: SP with one gate per edge
    spec = spec_of_label(method)
    parameter_name = summary.get("parameter_name", spec.parameter if spec is not None else None)
    base = dict(task=summary["task"], method=method, corruption=summary["corruption"],
                metric=summary["metric"], parameter_name=parameter_name, graph=summary.get("graph", "qkv"),
                seed=summary.get("seed"), run=str(folder))
    if summary.get("curve"):
        curve = pd.read_csv(folder / summary["curve"])
        return [dict(base, parameter=row["parameter"], n_edges=int(row["n_edges"]),
                     **{k: _rate(None if pd.isna(row[k]) else row[k])
                        for k in ("edge_tpr", "edge_fpr", "node_tpr", "node_fpr")},
                     test_metric=float(row["metric_test"]))
                for _, row in curve.iterrows()]
    parameter = summary.get("parameter", summary.get("tau"))
    return [dict(base, parameter=parameter, n_edges=summary["n_edges_kept"],
                 **{k: _rate(summary.get(k)) for k in ("edge_tpr", "edge_fpr", "node_tpr", "node_fpr")},
                 test_metric=summary["test"]["metric_circuit"])]


def collect_points(folders: list[Path]) -> pd.DataFrame:
    rows = [point for folder in folders for point in run_points(folder)]
    frame = pd.DataFrame(rows, columns=ROC_COLUMNS)
    frame["_order"] = frame["method"].map(method_rank)
    frame = frame.sort_values(["task", "_order", "corruption", "metric", "graph", "n_edges"], kind="stable")
    return frame.drop(columns="_order").reset_index(drop=True)


# ---- AUC -------------------------------------------------------------------------------------
def auc_table(points: pd.DataFrame) -> pd.DataFrame:
    """One row per curve and level; curves without ground truth (no TPR) are left out."""
    rows = []
    for key, group in points.groupby(CURVE_KEY, sort=False, dropna=False):
        for level in LEVELS:
            pairs = [(f, t) for f, t in zip(group[f"{level}_fpr"], group[f"{level}_tpr"])
                     if f is not None and t is not None and not (pd.isna(f) or pd.isna(t))]
            if not pairs:
                continue
            rows.append(dict(zip(CURVE_KEY, key), level=level, auc=roc_auc(pairs), n_points=len(pairs)))
    return pd.DataFrame(rows, columns=AUC_COLUMNS)


# ---- plots -----------------------------------------------------------------------------------
def _panels(task_points: pd.DataFrame) -> list[tuple]:
    """One panel per (corruption, metric, graph) of a task, in a stable order."""
    keys = task_points[["corruption", "metric", "graph"]].drop_duplicates()
    return sorted(map(tuple, keys.itertuples(index=False)))


def _panel_title(corruption: str, metric: str, graph: str, many_graphs: bool) -> str:
    title = f"{corruption} ablation, {metric}"
    return f"{title}, {graph} graph" if many_graphs else title


def _styles(methods) -> dict[str, dict]:
    """Line colour, style and width per method, fixed across a task's panels."""
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ordered = sorted(set(methods), key=method_rank)
    return {m: dict(color=palette[i % len(palette)], ls=_LINE_STYLES[i % len(_LINE_STYLES)][0],
                    lw=_LINE_STYLES[i % len(_LINE_STYLES)][1]) for i, m in enumerate(ordered)}


def plot_roc(task: str, points: pd.DataFrame, aucs: pd.DataFrame, out: Path) -> Path | None:
    points = points[points["edge_tpr"].notna()]
    if points.empty:
        return None
    panels = _panels(points)
    many_graphs = len({p[2] for p in panels}) > 1
    styles = _styles(points["method"])
    fig, axes = plt.subplots(len(LEVELS), len(panels), figsize=(4.6 * len(panels), 8.4), squeeze=False)
    for col, (corruption, metric, graph) in enumerate(panels):
        panel = points[(points.corruption == corruption) & (points.metric == metric) & (points.graph == graph)]
        for row, level in enumerate(LEVELS):
            ax = axes[row][col]
            for method, group in sorted(panel.groupby("method"), key=lambda kv: method_rank(kv[0])):
                pairs = list(zip(group[f"{level}_fpr"], group[f"{level}_tpr"]))
                match = aucs[(aucs.method == method) & (aucs.corruption == corruption) & (aucs.metric == metric)
                             & (aucs.graph == graph) & (aucs.level == level)]
                auc = float(match.auc.iloc[0]) if len(match) else roc_auc(pairs)
                xs, ys = roc_staircase(pairs)
                label = f"{method_labels().get(method, method)} (AUC {auc:.3f}, {len(pairs)} pts)"
                style = styles[method]
                ax.plot(xs, ys, label=label, alpha=0.9, **style)
                front = set(pareto_front(roc_points(pairs)))
                fx, fy = zip(*pairs)
                ax.scatter(fx, fy, s=16, color=style["color"], alpha=0.35, zorder=3)
                on_front = [p for p in pairs if p in front]
                if on_front:
                    ax.scatter(*zip(*on_front), s=26, color=style["color"], edgecolor="black", lw=0.5, zorder=4)
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
            ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal",
                   xlabel=f"false positive rate ({level}s)", ylabel=f"true positive rate ({level}s)",
                   title=f"{_panel_title(corruption, metric, graph, many_graphs)}\n{level} level")
            ax.grid(alpha=0.3)
            ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{task}: ROC against the canonical circuit", fontsize=14)
    return _save(fig, out / f"roc_{task}.png")


def _edge_axis(ax, largest: int) -> None:
    """Edge counts span orders of magnitude and include 0: symlog with plain-number ticks."""
    ax.set_xscale("symlog", linthresh=1, linscale=0.5)
    ticks = [0] + [m * 10 ** e for e in range(7) for m in (1, 2, 5) if m * 10 ** e <= max(largest, 1) * 1.5]
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def plot_metric_vs_edges(task: str, points: pd.DataFrame, out: Path) -> Path:
    panels = _panels(points)
    many_graphs = len({p[2] for p in panels}) > 1
    styles = _styles(points["method"])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
    for col, (corruption, metric, graph) in enumerate(panels):
        ax = axes[0][col]
        panel = points[(points.corruption == corruption) & (points.metric == metric) & (points.graph == graph)]
        for method, group in sorted(panel.groupby("method"), key=lambda kv: method_rank(kv[0])):
            group = group.sort_values("n_edges")
            ax.plot(group.n_edges, group.test_metric, marker="o", ms=4, lw=1.2, alpha=0.85, ls=styles[method]["ls"],
                    color=styles[method]["color"], label=method_labels().get(method, method))
        _edge_axis(ax, panel.n_edges.max())
        ax.set(xlabel="edges in the circuit", ylabel=f"{metric} on the test split",
               title=_panel_title(corruption, metric, graph, many_graphs))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{task}: faithfulness against circuit size", fontsize=13)
    return _save(fig, out / f"metric_vs_edges_{task}.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- the command ------------------------------------------------------------------------------
def report(roots: list[Path], out: Path) -> dict:
    complete, unfinished, failed = find_run_folders(roots)
    if not complete:
        raise ReportError(f"no complete run folder under {', '.join(map(str, roots))} "
                          f"({len(unfinished)} unfinished, {len(failed)} failed)")
    points = collect_points(complete)
    aucs = auc_table(points)
    out.mkdir(parents=True, exist_ok=True)
    points.to_csv(out / "roc_points.csv", index=False)
    aucs.to_csv(out / "auc.csv", index=False)
    plots = []
    for task, task_points in points.groupby("task"):
        roc = plot_roc(task, task_points, aucs[aucs.task == task], out)
        plots += [p for p in (roc, plot_metric_vs_edges(task, task_points, out)) if p is not None]
    return dict(points=points, aucs=aucs, plots=plots, n_runs=len(complete), unfinished=unfinished,
                failed=failed)


def format_auc_table(aucs: pd.DataFrame) -> str:
    if aucs.empty:
        return "no ROC curves (no run with a canonical circuit)"
    wide = aucs.pivot_table(index=["task", "corruption", "metric", "graph", "method"], columns="level",
                            values="auc", sort=False)
    wide = wide.reindex(columns=[level for level in LEVELS if level in wide.columns])
    return wide.to_string(float_format=lambda v: f"{v:.3f}" if not math.isnan(v) else "-")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="circuitfind-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="folders holding run folders")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the first DIR)")
    args = parser.parse_args(argv)
    out = args.out or args.dirs[0]
    try:
        result = report(args.dirs, out)
    except (ReportError, OSError, ValueError, KeyError) as error:
        print(f"circuitfind-report: error: {error}", file=sys.stderr)
        sys.exit(2)
    if result["unfinished"]:
        print(f"warning: skipped {len(result['unfinished'])} unfinished run folder(s) (no summary.json)",
              file=sys.stderr)
    if result["failed"]:
        listed = ", ".join(str(f) for f in result["failed"][:3]) + (" ..." if len(result["failed"]) > 3 else "")
        print(f"warning: skipped {len(result['failed'])} failed run folder(s) (error.txt): {listed}", file=sys.stderr)
    print(f"{result['n_runs']} runs, {len(result['points'])} ROC points")
    print(format_auc_table(result["aucs"]))
    print(f"wrote {out / 'roc_points.csv'}, {out / 'auc.csv'} and {len(result['plots'])} plots to {out}")


if __name__ == "__main__":
    main()
