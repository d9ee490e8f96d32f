"""CPR and CMD of every curve of a set of runs (MIB's circuit-track scores; the numbers are
``core.faithfulness``'s).

A curve is one task, method, ablation, metric, graph and variant, as for the AUC.  Its points are
circuits with a fraction of the graph's edges and a faithfulness on the test split:

- a ranking method (EAP, EAP-IG, HISP): its pruned top-n circuits at MIB's ten fractions, placed at
  the fraction they were cut at (as MIB places them), from its one run;
- a per-threshold method (ACDC, SP, guided ACDC): each run's own circuit at its own fraction
  (edges kept / edges in the graph).

CPR and CMD integrate over MIB's range, 0.1% to 100% of the edges, or over the part of it a sweep
covers (``range`` says which, empty when the whole range is covered).
"""

from __future__ import annotations

import math

import pandas as pd

from ..core.faithfulness import areas

CURVE_KEY = ["task", "method", "corruption", "metric", "graph", "variant"]
COLUMNS = [*CURVE_KEY, "cpr", "cmd", "range", "n_points"]


def faithfulness_table(points: pd.DataFrame) -> pd.DataFrame:
    """One row per curve with at least one point that has a fraction and a faithfulness."""
    rows = []
    usable = points[points["fraction"].notna() & points["faithfulness"].notna()] \
        if {"fraction", "faithfulness"} <= set(points.columns) else points.iloc[0:0]
    for key, group in usable.groupby(CURVE_KEY, sort=False, dropna=False):
        result = areas(group["fraction"].astype(float).tolist(), group["faithfulness"].astype(float).tolist())
        rows.append(dict(zip(CURVE_KEY, key), cpr=result.cpr, cmd=result.cmd, range=result.range_note(),
                         n_points=result.n_points))
    return pd.DataFrame(rows, columns=COLUMNS)


def faithfulness_text(table: pd.DataFrame) -> str:
    """The table as text: CPR (higher is better, 0.999 at most for f <= 1) and CMD (lower is better)."""
    if table.empty:
        return "no faithfulness curves (no run with a fraction and a test faithfulness)"
    shown = table.set_index(["task", "corruption", "metric", "graph", "method", "variant"])[
        ["cpr", "cmd", "range", "n_points"]]
    return shown.to_string(float_format=lambda v: f"{v:.3f}" if not math.isnan(v) else "-")
