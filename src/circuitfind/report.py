"""``circuitfind-report DIR [DIR ...] [--out OUT]``: run folders -> ROC points, AUC table, plots.

Reads every run folder under the given folders (recursively) and writes to OUT (default: the first
DIR):

    roc_points.csv          one row per circuit: a run's own, or each row of a one-run curve (HISP's
                            curve.csv): task, method, corruption, metric, parameter, n_edges,
                            edge/node TPR and FPR, test_metric (the circuit's metric on the test split)
    auc.csv                 per task, method, corruption, metric, graph, variant and level (edge,
                            node): the area under the pessimistic ROC staircase
    roc_<task>.png, .pdf    the ROC curves: a row of panels per ablation, metric and graph, edge and
                            node level side by side
    metric_vs_edges_<task>.png, .pdf   the test metric against the number of edges kept
    faithfulness.csv        per curve: CPR and CMD (MIB's areas under the test-split faithfulness
                            against the fraction of edges; ``evaluation.faithfulness``)
    faithfulness_<task>.png, .pdf   faithfulness against the fraction of edges, MIB's fractions marked

Folders with no summary.json are unfinished (or failed: error.txt) runs; they are counted and
skipped.  Runs make one curve when their configs differ only in the swept parameter (see
``runs.points``); a ``circuitfind -m`` sweep writes its own folder, so ``circuitfind-report <sweep
folder>`` reports exactly that sweep.  The pictures are drawn by ``plots``, as the figures are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from .evaluation.faithfulness import faithfulness_table
from .plots.curves import Panel, faithfulness_figure, metric_figure, roc_figure
from .plots.style import save
from .plots.tables import LEVELS, auc_table, scores_text
from .runs.points import collect_points, find_run_folders

PANEL_KEY = ["corruption", "metric", "graph"]  # a task's panels: one per ablation, metric and graph


class ReportError(ValueError):
    pass


def _panel_groups(points: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    return [(dict(zip(PANEL_KEY, key)), group)
            for key, group in points.groupby(PANEL_KEY, sort=True, dropna=False)]


def task_roc_figure(task: str, points: pd.DataFrame):
    """A task's ROC: a row per ablation, metric and graph, edge and node level side by side; None
    without ground truth."""
    rated = points[points["edge_tpr"].notna()]
    if rated.empty:
        return None
    grid = [[Panel(group, dict(task=task, **facts, level=level)) for level in LEVELS]
            for facts, group in _panel_groups(rated)]
    return roc_figure(grid)[0]


def task_metric_figure(task: str, points: pd.DataFrame):
    """A task's test metric against circuit size: a panel per ablation, metric and graph."""
    measured = points[points["test_metric"].notna()]  # a ranking's ROC-only rows have no metric
    return metric_figure([Panel(group, dict(task=task, **facts)) for facts, group in _panel_groups(measured)])


def task_faithfulness_figure(task: str, points: pd.DataFrame, table: pd.DataFrame):
    """A task's faithfulness against the fraction of edges; None where no point has one."""
    placed = points[points["fraction"].notna() & points["faithfulness"].notna()]
    if placed.empty:
        return None
    return faithfulness_figure([Panel(group, dict(task=task, **facts)) for facts, group in _panel_groups(placed)],
                               table[table.task == task])


def report(roots: list[Path], out: Path) -> dict:
    complete, unfinished, failed = find_run_folders(roots)
    if not complete:
        raise ReportError(f"no complete run folder under {', '.join(map(str, roots))} "
                          f"({len(unfinished)} unfinished, {len(failed)} failed)")
    points = collect_points(complete)
    aucs = auc_table(points)
    faithful = faithfulness_table(points)
    out.mkdir(parents=True, exist_ok=True)
    points.to_csv(out / "roc_points.csv", index=False)
    aucs.to_csv(out / "auc.csv", index=False)
    faithful.to_csv(out / "faithfulness.csv", index=False)
    plots = []
    for task, task_points in points.groupby("task"):
        roc = task_roc_figure(task, task_points)
        plots += (save(roc, out / f"roc_{task}") if roc is not None else [])
        plots += save(task_metric_figure(task, task_points), out / f"metric_vs_edges_{task}")
        curve = task_faithfulness_figure(task, task_points, faithful)
        plots += (save(curve, out / f"faithfulness_{task}") if curve is not None else [])
    return dict(points=points, aucs=aucs, faithfulness=faithful, plots=plots, n_runs=len(complete),
                unfinished=unfinished, failed=failed)


def command(dirs: list[Path], out: Path | None = None) -> None:
    """``circuitfind-report DIR ... [--out OUT]`` once its arguments are parsed (``report_cli``):
    the report, its tables on stdout, one line and exit code 2 for a bad folder."""
    out = out or dirs[0]
    try:
        result = report(dirs, out)
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
    print("AUC against the ground truth; CPR = area under the test faithfulness f, CMD = area under |1 - f|, "
          "over 0.1%-100% of the edges (range: the part a sweep covers, where it is not all of it)")
    print(scores_text(result["aucs"], result["faithfulness"]))
    print(f"wrote {out / 'roc_points.csv'}, {out / 'auc.csv'}, {out / 'faithfulness.csv'} and "
          f"{len(result['plots'])} plot files "
          f"(PNG and PDF) to {out}")
