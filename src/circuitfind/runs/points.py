"""Run folders -> the points frame: one row per circuit, what the report and the figures draw.

A run gives one circuit (ACDC at one tau, SP at one lambda) or a whole curve (HISP's and EAP's
top-k: ``curve.csv``).  Each row: task, method, corruption, metric, the parameter, edges kept,
edge/node TPR and FPR (empty without ground truth), the circuit's metric on the test split (with
the empty circuit's and the full model's beside it), graph, seed, variant and run folder.

**One curve per configuration.**  Runs join one curve only when their resolved configs
(``.hydra/config.yaml``) differ in nothing but the swept parameter (ACDC's tau, SP's lambda_reg,
HISP's k) and settings that cannot change a result (progress, device, batch_edges, ...).  Runs that
differ in anything else (the prompt set ``task.data``, SP's ``epochs`` or ``lr``, the seed, the
model, ...) make separate curves, each labelled by the settings that set it apart: its ``variant``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from ..methods.spec import method_rank, spec_of_label
from .rundir import NOT_HASHED, NOT_HASHED_METHOD, SUMMARY

POINT_COLUMNS = ["task", "method", "corruption", "metric", "parameter", "n_edges", "edge_tpr", "edge_fpr",
                 "node_tpr", "node_fpr", "test_metric", "parameter_name", "graph", "seed", "variant", "run",
                 "test_metric_empty", "test_metric_full", "fraction", "faithfulness"]
# Config keys that the points' own columns show already (from each run's summary, which resolves
# the task's default metric), or that are not part of what one run computes.
_NOT_VARIANT = ("metric", "corruption.name", "graph.granularity", "method.name", "task.name", "task.sweeps")


def find_run_folders(roots: list[Path]) -> tuple[list[Path], list[Path], list[Path]]:
    """(complete runs, unfinished runs, failed runs) under ``roots``, each folder once.  A folder is
    a run folder when it holds summary.json (complete), error.txt (failed), edges.csv or .hydra/."""
    complete, unfinished, failed = [], [], []
    seen: set[Path] = set()
    for root in roots:
        if not root.is_dir():
            raise ValueError(f"{root} is not a folder")
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


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
    return flat


def swept_keys(method: str) -> set[str]:
    """The config keys along which one method's runs make one curve: its spec's parameter, at the top
    level (ACDC's ``tau``) or under ``method.`` (SP's ``lambda_reg``, HISP's ``k``)."""
    spec = spec_of_label(method)
    if spec is None or spec.parameter is None:
        return set()
    keys = {spec.parameter if spec.parameter in spec.top_level else f"method.{spec.parameter}"}
    return keys | ({spec.sweep.key} if spec.sweep is not None else set())


def run_settings(folder: Path, summary: dict, method: str) -> dict:
    """What a run computed, as flat ``key: value`` pairs without its swept parameter: the resolved
    ``.hydra/config.yaml`` where the folder has one, else the summary's model and seed."""
    path = folder / ".hydra" / "config.yaml"
    try:
        tree = OmegaConf.to_container(OmegaConf.load(path), resolve=True) if path.is_file() else None
    except Exception:  # an unreadable or unresolvable copy: fall back on the summary
        tree = None
    if tree is None:
        return {k: summary.get(k) for k in ("model", "seed")}
    flat = _flatten({k: v for k, v in tree.items() if k not in NOT_HASHED})
    skip = swept_keys(method) | {f"method.{k}" for k in NOT_HASHED_METHOD}
    return {k: v for k, v in flat.items()
            if k not in skip and not any(k == n or k.startswith(n + ".") for n in _NOT_VARIANT)}


def run_points(folder: Path) -> list[dict]:
    """The points of one complete run folder: its own circuit, or every row of its curve."""
    summary = json.loads((folder / SUMMARY).read_text())
    method = summary.get("method_label") or summary["method"]  # e.g. sp_edges: SP with one gate per edge
    spec = spec_of_label(method)
    parameter_name = summary.get("parameter_name", spec.parameter if spec is not None else None)
    settings = json.dumps(run_settings(folder, summary, method), sort_keys=True, default=str)
    test = summary.get("test") or {}
    base = dict(task=summary["task"], method=method, corruption=summary["corruption"],
                metric=summary["metric"], parameter_name=parameter_name, graph=summary.get("graph", "qkv"),
                seed=summary.get("seed"), variant=settings, run=str(folder),
                test_metric_empty=test.get("metric_empty"), test_metric_full=test.get("metric_full"))
    if summary.get("curve"):
        curve = pd.read_csv(folder / summary["curve"])

        def column(row, name):  # a ranking's curve.csv: fraction and faithfulness_test (NaN off MIB's fractions)
            return float(row[name]) if name in row and not pd.isna(row[name]) else float("nan")

        return [dict(base, parameter=row["parameter"], n_edges=int(row["n_edges"]),
                     **{k: _rate(None if pd.isna(row[k]) else row[k])
                        for k in ("edge_tpr", "edge_fpr", "node_tpr", "node_fpr")},
                     test_metric=float(row["metric_test"]), fraction=column(row, "fraction"),
                     faithfulness=column(row, "faithfulness_test"))
                for _, row in curve.iterrows()]
    n_total = summary.get("n_edges_total")
    return [dict(base, parameter=summary.get("parameter"), n_edges=summary["n_edges_kept"],
                 **{k: _rate(summary.get(k)) for k in ("edge_tpr", "edge_fpr", "node_tpr", "node_fpr")},
                 test_metric=test["metric_circuit"],
                 fraction=summary["n_edges_kept"] / n_total if n_total else float("nan"),
                 faithfulness=_test_faithfulness(summary))]


def _test_faithfulness(summary: dict) -> float:
    """A run's own circuit's faithfulness on the test split (from its metrics where an older
    summary.json does not hold it)."""
    from ..core.faithfulness import faithfulness, full_model_metric

    held = (summary.get("faithfulness") or {}).get("test")
    if held is not None:
        return float(held)
    test = summary.get("test") or {}
    if not all(isinstance(test.get(k), (int, float)) for k in ("metric_circuit", "metric_empty", "metric_full")):
        return float("nan")
    return faithfulness(test["metric_circuit"], test["metric_empty"],
                        full_model_metric(summary.get("metric", ""), test["metric_full"]))


def collect_points(folders: list[Path]) -> pd.DataFrame:
    """The points of complete run folders, sorted by task, method (the specs' order), ... and size."""
    rows = [point for folder in folders for point in run_points(folder)]
    frame = pd.DataFrame(rows, columns=POINT_COLUMNS)
    frame["variant"] = variant_labels(frame)
    frame["_order"] = frame["method"].map(method_rank)
    frame = frame.sort_values(["task", "_order", "corruption", "metric", "graph", "variant", "n_edges"],
                              kind="stable")
    return frame.drop(columns="_order").reset_index(drop=True)


def variant_labels(frame: pd.DataFrame) -> pd.Series:
    """Each point's variant label: the settings (``key=value, ...``) in which its run differs from
    other runs of the same task and method, or "" when they all agree (then one curve per panel)."""
    labels = pd.Series("", index=frame.index, dtype=object)
    for _, group in frame.groupby(["task", "method"], sort=False):
        settings = {text: json.loads(text) for text in group["variant"].unique()}
        if len(settings) < 2:
            continue
        keys = sorted({k for s in settings.values() for k in s})
        differing = [k for k in keys if len({json.dumps(s.get(k), default=str) for s in settings.values()}) > 1]
        for text, values in settings.items():
            label = ", ".join(f"{k}={values.get(k)}" for k in differing)
            labels[group.index[group["variant"] == text]] = label
    return labels
