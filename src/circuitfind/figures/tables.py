"""The paper's AUC tables (``make tables``): a row per task and method, a column per metric (KL, the
task's own) and ablation, edge and node level; CSV, and Markdown with the best method in bold.
Every AUC comes from the one AUC table (``plots.tables.auc_table``), as the report's does."""

from __future__ import annotations

import pandas as pd
from omegaconf import DictConfig

from ..methods.spec import method_rank
from ..plots.style import method_label, task_label
from ..plots.tables import LEVELS, auc_table
from .plan import task_metrics

METRIC_KIND_LABELS = {"kl": "KL", "task": "task metric"}

TABLE_COLUMNS = ["level", "task", "method", "metric_kind", "metric", "corruption", "auc", "n_points"]


def auc_long(points: pd.DataFrame, spec: DictConfig, tasks: list[str]) -> pd.DataFrame:
    """One row per (level, task, method, metric column, corruption): the AUC of the pessimistic ROC
    staircase (``plots.tables.auc_table``), labelled with the column of the paper's table it fills."""
    aucs = auc_table(points)
    rows = []
    for _, row in aucs.iterrows():
        if row.task not in tasks:
            continue
        for kind, metric in task_metrics(spec, row.task).items():
            if metric == row.metric:
                rows.append(dict(level=row.level, task=row.task, method=row.method, metric_kind=kind,
                                 metric=metric, corruption=row.corruption, auc=float(row.auc),
                                 n_points=int(row.n_points)))
    frame = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    frame["_task"], frame["_method"] = frame.task.map(tasks.index), frame.method.map(method_rank)
    frame = frame.sort_values(["level", "_task", "_method", "metric_kind", "corruption"], kind="stable")
    return frame.drop(columns=["_task", "_method"]).reset_index(drop=True)


def table_columns(spec: DictConfig, corruptions: list[str]) -> list[tuple[str, str]]:
    kinds = list(dict.fromkeys(k for t in spec.metrics for k in task_metrics(spec, t)))
    return [(kind, corruption) for kind in kinds for corruption in corruptions]


def auc_wide(long: pd.DataFrame, level: str, columns: list[tuple[str, str]]) -> pd.DataFrame:
    """The paper's layout: a row per task and method, a column per (metric, corruption)."""
    part = long[long.level == level]
    index = list(dict.fromkeys(zip(part.task, part.method)))
    wide = pd.DataFrame(index=pd.MultiIndex.from_tuples(index, names=["task", "method"]),
                        columns=[f"{METRIC_KIND_LABELS.get(k, k)}, {c}" for k, c in columns], dtype=float)
    for _, row in part.iterrows():
        wide.loc[(row.task, row.method), f"{METRIC_KIND_LABELS.get(row.metric_kind, row.metric_kind)}, {row.corruption}"] = row.auc
    return wide


def auc_markdown(long: pd.DataFrame, spec: DictConfig, corruptions: list[str]) -> str:
    """Both levels as Markdown tables; per task and column the best method in bold, "–" where the
    task has no such metric or no complete runs."""
    columns = table_columns(spec, corruptions)
    lines = []
    for level in LEVELS:
        wide = auc_wide(long, level, columns)
        lines += [f"### {level.capitalize()}-level AUC", ""]
        lines.append("| task | method | " + " | ".join(wide.columns) + " |")
        lines.append("| --- | --- | " + " | ".join("---:" for _ in wide.columns) + " |")
        for (task, method), row in wide.iterrows():
            cells = []
            for column, value in row.items():
                best = wide.loc[task][column].max()
                text = "–" if pd.isna(value) else f"{value:.3f}"
                cells.append(f"**{text}**" if not pd.isna(value) and value == best else text)
            metrics = task_metrics(spec, task)
            named = ", ".join(f"{METRIC_KIND_LABELS.get(k, k)}: {m}" for k, m in metrics.items())
            lines.append(f"| {task_label(task)} ({named}) | {method_label(method)} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
