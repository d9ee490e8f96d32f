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

**One curve per configuration.**  Runs join one curve only when their resolved configs
(``.hydra/config.yaml``) differ in nothing but the swept parameter (ACDC's tau, SP's lambda_reg,
HISP's k) and settings that cannot change a result (progress, device, batch_edges, ...).  Runs that
differ in anything else (the prompt set ``task.data``, SP's ``epochs`` or ``lr``, the seed, the
model, ...) make separate curves, and each such curve is labelled by the settings that set it
apart (the ``variant`` column).  A ``circuitfind -m`` sweep writes its own folder, so
``circuitfind-report <sweep folder>`` reports exactly that sweep.
"""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from .evaluation.rates import pareto_front, roc_auc, roc_points, roc_staircase  # noqa: E402
from .methods.spec import method_labels, method_rank, spec_of_label  # noqa: E402
from .runs.rundir import NOT_HASHED, NOT_HASHED_METHOD, SUMMARY  # noqa: E402

ROC_COLUMNS = ["task", "method", "corruption", "metric", "parameter", "n_edges", "edge_tpr", "edge_fpr",
               "node_tpr", "node_fpr", "test_metric", "parameter_name", "graph", "seed", "variant", "run"]
AUC_COLUMNS = ["task", "method", "corruption", "metric", "level", "auc", "n_points", "graph", "variant"]
CURVE_KEY = ["task", "method", "corruption", "metric", "graph", "variant"]  # one ROC curve per group
# Config keys a curve is swept over, per method: runs differing only here share a curve.
# Shown by the report's panels and columns already (from each run's summary, which resolves the
# task's default metric), or not part of what one run computes.
_NOT_VARIANT = ("metric", "corruption.name", "graph.granularity", "method.name", "task.name", "task.sweeps")
LEVELS = ("edge", "node")
# Curves often coincide (every method at TPR 1, FPR 0): wide solid under narrower broken lines, and
# markers that shrink and change shape from curve to curve, so a point under another still shows.
_LINE_STYLES = [("-", 4.0), ("--", 2.6), ("-.", 1.8), (":", 1.6)]
_MARKERS = ["o", "s", "D", "^", "v", "P", "X", "*"]
# Metric values this far below the panel's largest magnitude are rounding (a KL of -4.7e-17): zero.
ROUNDING = 1e-9


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
    ``.hydra/config.yaml`` where the folder has one, else the summary's task, model, seed, ..."""
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
    """The ROC points of one complete run folder: its own circuit, or every row of its curve."""
    summary = json.loads((folder / SUMMARY).read_text())
    method = summary.get("method_label") or summary["method"]  # e.g. sp_edges: SP with one gate per edge
    spec = spec_of_label(method)
    parameter_name = summary.get("parameter_name", spec.parameter if spec is not None else None)
    settings = json.dumps(run_settings(folder, summary, method), sort_keys=True, default=str)
    base = dict(task=summary["task"], method=method, corruption=summary["corruption"],
                metric=summary["metric"], parameter_name=parameter_name, graph=summary.get("graph", "qkv"),
                seed=summary.get("seed"), variant=settings, run=str(folder))
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


def _curves(points: pd.DataFrame) -> list[tuple[str, str]]:
    """The (method, variant) curves of a task, in the paper's method order."""
    keys = set(map(tuple, points[["method", "variant"]].itertuples(index=False)))
    return sorted(keys, key=lambda mv: (method_rank(mv[0]), mv[1]))


def _styles(curves: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """Line colour, style and width, marker shape and size per curve, fixed across a task's panels.
    Widths and marker sizes shrink along the list, and curves are drawn in that order, so a curve
    or point lying exactly on an earlier one stays visible inside it."""
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {c: dict(color=palette[i % len(palette)], ls=_LINE_STYLES[i % len(_LINE_STYLES)][0],
                    lw=_LINE_STYLES[i % len(_LINE_STYLES)][1], marker=_MARKERS[i % len(_MARKERS)],
                    ms=max(9.0 - 1.5 * i, 3.0)) for i, c in enumerate(curves)}


def curve_label(method: str, variant: str) -> str:
    name = method_labels().get(method, method)
    return f"{name} [{variant}]" if variant else name


def denoise(values: pd.Series) -> pd.Series:
    """Rounding noise (|v| below ROUNDING times the largest |v|, and at least below ROUNDING) as 0."""
    scale = max(float(values.abs().max()) if len(values) else 0.0, 1.0)
    return values.where(values.abs() >= ROUNDING * scale, 0.0)


def plot_roc(task: str, points: pd.DataFrame, aucs: pd.DataFrame, out: Path) -> Path | None:
    points = points[points["edge_tpr"].notna()]
    if points.empty:
        return None
    fig = roc_figure(task, points, aucs)
    return None if fig is None else _save(fig, out / f"roc_{task}.png")


def roc_figure(task: str, points: pd.DataFrame, aucs: pd.DataFrame):
    """The ROC figure of one task (None without ground truth): a column per panel, a row per level."""
    points = points[points["edge_tpr"].notna()]
    if points.empty:
        return None
    panels = _panels(points)
    many_graphs = len({p[2] for p in panels}) > 1
    styles = _styles(_curves(points))
    fig, axes = plt.subplots(len(LEVELS), len(panels), figsize=(4.8 * len(panels), 9.0), squeeze=False,
                             layout="constrained")
    for col, (corruption, metric, graph) in enumerate(panels):
        panel = points[(points.corruption == corruption) & (points.metric == metric) & (points.graph == graph)]
        for row, level in enumerate(LEVELS):
            ax = axes[row][col]
            for curve in _curves(panel):
                group = panel[(panel.method == curve[0]) & (panel.variant == curve[1])]
                pairs = list(zip(group[f"{level}_fpr"], group[f"{level}_tpr"]))
                match = aucs[(aucs.method == curve[0]) & (aucs.variant == curve[1]) & (aucs.corruption == corruption)
                             & (aucs.metric == metric) & (aucs.graph == graph) & (aucs.level == level)]
                auc = float(match.auc.iloc[0]) if len(match) else roc_auc(pairs)
                xs, ys = roc_staircase(pairs)
                style = styles[curve]
                ax.plot(xs, ys, label=f"{curve_label(*curve)} (AUC {auc:.3f}, {len(pairs)} pts)", alpha=0.9,
                        color=style["color"], ls=style["ls"], lw=style["lw"])
                front = set(pareto_front(roc_points(pairs)))
                on_front = [p in front for p in pairs]
                fx, fy = zip(*pairs)
                ax.scatter(fx, fy, s=style["ms"] ** 2, marker=style["marker"], facecolors="none",
                           edgecolors=[style["color"] if f else "0.6" for f in on_front], linewidths=1.2, zorder=3)
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
            ax.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03), aspect="equal",
                   xlabel=f"false positive rate ({level}s)", ylabel=f"true positive rate ({level}s)",
                   title=f"{_panel_title(corruption, metric, graph, many_graphs)}\n{level} level")
            ax.grid(alpha=0.3)
            ax.legend(loc="lower right", fontsize=7)
    _suptitle(fig, f"{task}: ROC against the canonical circuit (grey-ringed markers: off the Pareto front)", 12)
    return fig


def _edge_axis(ax, largest: int) -> None:
    """Edge counts span orders of magnitude and include 0: symlog with plain-number ticks."""
    ax.set_xscale("symlog", linthresh=1, linscale=0.5)
    ticks = [0] + [m * 10 ** e for e in range(7) for m in (1, 2, 5) if m * 10 ** e <= max(largest, 1) * 1.5]
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def plot_metric_vs_edges(task: str, points: pd.DataFrame, out: Path) -> Path:
    return _save(metric_vs_edges_figure(task, points), out / f"metric_vs_edges_{task}.png")


def metric_vs_edges_figure(task: str, points: pd.DataFrame):
    panels = _panels(points)
    many_graphs = len({p[2] for p in panels}) > 1
    styles = _styles(_curves(points))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.8), squeeze=False, layout="constrained")
    for col, (corruption, metric, graph) in enumerate(panels):
        ax = axes[0][col]
        panel = points[(points.corruption == corruption) & (points.metric == metric) & (points.graph == graph)]
        values = denoise(panel.test_metric.astype(float))
        for curve in _curves(panel):
            group = panel[(panel.method == curve[0]) & (panel.variant == curve[1])].sort_values("n_edges")
            style = styles[curve]
            ax.plot(group.n_edges, values[group.index], marker=style["marker"], ms=style["ms"], mfc="none", mew=1.2,
                    lw=1.2, alpha=0.85, ls=style["ls"], color=style["color"], label=curve_label(*curve))
        _edge_axis(ax, panel.n_edges.max())
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter(useOffset=False))
        if float(values.abs().max()) == 0.0:  # every circuit exact: a readable axis around 0
            ax.set_ylim(-1.0, 1.0)
        ax.set(xlabel="edges in the circuit", ylabel=f"{metric} on the test split",
               title=_panel_title(corruption, metric, graph, many_graphs))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _suptitle(fig, f"{task}: faithfulness against circuit size", 12)
    return fig


def _suptitle(fig, text: str, fontsize: float) -> None:
    """The figure's title, wrapped to its width (a long task name must not run off the image)."""
    chars_per_line = max(int(fig.get_figwidth() * 72 / (0.62 * fontsize)), 20)
    fig.suptitle("\n".join(textwrap.wrap(text, chars_per_line)), fontsize=fontsize)


def _save(fig, path: Path) -> Path:
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
    wide = aucs.pivot_table(index=["task", "corruption", "metric", "graph", "method", "variant"], columns="level",
                            values="auc", sort=False)
    wide = wide.reindex(columns=[level for level in LEVELS if level in wide.columns])
    return wide.to_string(float_format=lambda v: f"{v:.3f}" if not math.isnan(v) else "-")


def main(argv: list[str] | None = None) -> None:
    from .report_cli import build_parser  # the arguments (``circuitfind-report`` answers --help there)

    args = build_parser().parse_args(argv)
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
