"""The AUC table every picture and table reads: one row per curve and level.

A curve is one task, method, ablation, metric, graph and variant (``CURVE_KEY``): runs join it only
when they differ in nothing else than the method's swept parameter, so an AUC never mixes graphs,
prompt sets or training settings.  ``auc_table`` computes it from the points frame (``runs.points``);
``scores_text`` prints it beside MIB's CPR and CMD (the faithfulness table of
``evaluation.faithfulness``), a row per curve; ``auc_heatmap`` draws a task x (method, ablation) grid.
"""

from __future__ import annotations

import math
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..evaluation.rates import roc_auc  # noqa: E402
from .style import method_label, ordered_methods, task_label  # noqa: E402

CURVE_KEY = ["task", "method", "corruption", "metric", "graph", "variant"]  # one ROC curve per group
AUC_COLUMNS = [*CURVE_KEY[:4], "level", "auc", "n_points", "graph", "variant"]
LEVELS = ("edge", "node")


def auc_table(points: pd.DataFrame) -> pd.DataFrame:
    """One row per curve and level: the area under its pessimistic ROC staircase
    (``evaluation.rates.roc_auc``); curves without ground truth (no TPR) are left out."""
    rows = []
    for key, group in points.groupby(CURVE_KEY, sort=False, dropna=False):
        for level in LEVELS:
            pairs = [(f, t) for f, t in zip(group[f"{level}_fpr"], group[f"{level}_tpr"])
                     if f is not None and t is not None and not (pd.isna(f) or pd.isna(t))]
            if not pairs:
                continue
            rows.append(dict(zip(CURVE_KEY, key), level=level, auc=roc_auc(pairs), n_points=len(pairs)))
    return pd.DataFrame(rows, columns=AUC_COLUMNS)


def scores_text(aucs: pd.DataFrame, faithful: pd.DataFrame) -> str:
    """One row per curve: edge and node AUC (where a ground truth exists) beside CPR, CMD and the range
    of fractions a per-threshold sweep covers (where its circuits have a test faithfulness)."""
    index = ["task", "corruption", "metric", "graph", "method", "variant"]
    wide = aucs.pivot_table(index=index, columns="level", values="auc", sort=False) if len(aucs) else None
    if wide is not None:
        wide = wide.reindex(columns=[level for level in LEVELS if level in wide.columns])
        wide.columns = [f"{level} AUC" for level in wide.columns]
    areas = faithful.set_index(index)[["cpr", "cmd", "range"]].rename(columns={"cpr": "CPR", "cmd": "CMD"}) \
        if len(faithful) else None
    parts = [part for part in (wide, areas) if part is not None]
    if not parts:
        return "no curves (no run with a ground-truth circuit or a test faithfulness)"
    table = parts[0] if len(parts) == 1 else parts[0].join(parts[1], how="outer", sort=False)
    if "range" in table.columns:
        table["range"] = table["range"].fillna("")
    return table.to_string(float_format=lambda v: f"{v:.3f}" if not math.isnan(v) else "-", na_rep="-")


def auc_heatmap(aucs: pd.DataFrame, tasks: list[str], corruptions: list[str],
                title: str = "AUC against the ground-truth circuits"):
    """Edge- and node-level AUC side by side: a row per task, a column per (method, ablation), each
    cell written out; blank where a curve is missing.  ``aucs``: ``auc_table``'s columns."""
    methods = ordered_methods(aucs.method) if len(aucs) else []
    columns = [(m, c) for m in methods for c in corruptions]
    fig, axes = plt.subplots(1, 2, figsize=(2.6 + 0.62 * len(columns) * 2, 1.5 + 0.42 * len(tasks)),
                             squeeze=False, layout="constrained")
    image = None
    for ax, level in zip(axes[0], LEVELS):
        grid = np.full((len(tasks), len(columns)), np.nan)
        for _, row in aucs[aucs.level == level].iterrows():
            if row.task in tasks and (row.method, row.corruption) in columns:
                grid[tasks.index(row.task), columns.index((row.method, row.corruption))] = row.auc
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value < 0.6 else "black")
        names = ["\n".join(textwrap.wrap(method_label(m), 9, break_on_hyphens=False)) for m, _ in columns]
        ax.set_xticks(range(len(columns)), [f"{n}\n{c}" for n, (_, c) in zip(names, columns)], fontsize=7)
        ax.set_yticks(range(len(tasks)), [task_label(t) for t in tasks], fontsize=7)
        ax.set_title(f"{level}-level AUC", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8, label="AUC")
    fig.suptitle(title, fontsize=10)
    return fig
