"""The two curve pictures every result is shown with: ROC against the ground truth, and the test
metric against circuit size.  Both the report and the figures draw through here.

A picture is a grid of panels; a panel holds the points of one task, ablation, metric and graph
(and, for ROC, one level: edges or nodes).  What every panel shares goes into the figure's title;
what differs from panel to panel into the panels' titles.  Inside a panel one curve per method and
*variant* (the settings in which its runs differ from the method's other runs, see
``runs.points``); a method has one colour and marker (``plots.style``) and each of its circuits is
shaded by the method's parameter, read off a colour bar per method.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.cm  # noqa: E402
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ..evaluation.rates import pareto_front, roc_auc, roc_points, roc_staircase  # noqa: E402
from ..methods.spec import method_rank, spec_of_label  # noqa: E402
from .style import (LEVEL_LABELS, CurveStyle, curve_label, curve_styles, method_color, metric_label,  # noqa: E402
                    ordered_methods, shade_map, task_label)

# What a panel shows, in the order titles name it.
FACTS = ("task", "corruption", "metric", "graph", "level")
# Metric values this far below the panel's largest magnitude are rounding (a KL of -4.7e-17): zero.
ROUNDING = 1e-9
PANEL_INCHES = 3.3  # the side of a square ROC panel
BAR_INCHES = 0.6  # one parameter colour bar with its label


@dataclass
class Panel:
    """One panel: its points, and what they all share (task, corruption, metric, graph; level for ROC)."""

    points: pd.DataFrame
    facts: dict


def describe(name: str, value) -> str:
    if name == "task":
        return task_label(value)
    if name == "corruption":
        return f"{value} ablation"
    if name == "metric":
        return metric_label(value)
    if name == "graph":
        return f"{value} graph"
    if name == "level":
        return f"{value} level"
    return f"{name}={value}"


def split_facts(panels: list[Panel]) -> tuple[str, list[str]]:
    """(what every panel shares, each panel's own facts), both as readable text."""
    names = [n for n in FACTS if any(n in p.facts for p in panels)]
    shared = [n for n in names if len({str(p.facts.get(n)) for p in panels}) == 1]
    common = ", ".join(describe(n, panels[0].facts[n]) for n in shared if panels[0].facts.get(n) is not None)
    own = [", ".join(describe(n, p.facts[n]) for n in names if n not in shared and p.facts.get(n) is not None)
           for p in panels]
    return common, own


def with_curves(panels: list[Panel]) -> list[Panel]:
    """The panels with each point's ``curve``: its variant, and every setting of the curve key
    (task, ablation, metric, graph) that differs inside its panel, so that a panel never joins runs
    of two settings into one curve."""
    out = []
    for panel in panels:
        points = panel.points.copy()
        varying = [c for c in ("task", "corruption", "metric", "graph") if points[c].nunique(dropna=False) > 1]
        parts = [points["variant"].fillna("").astype(str)] + [c + "=" + points[c].astype(str) for c in varying]
        curve = parts[0]
        for part in parts[1:]:
            curve = curve.where(curve == "", curve + ", ") + part
        out.append(Panel(points.assign(curve=curve), panel.facts))
    return out


def curves_of(points: pd.DataFrame) -> list[tuple[str, str]]:
    """The (method, curve) pairs of ``points``, in the methods' order."""
    keys = set(map(tuple, points[["method", "curve"]].itertuples(index=False)))
    return sorted(keys, key=lambda mc: (method_rank(mc[0]), mc[1]))


def curve_points(points: pd.DataFrame, curve: tuple[str, str]) -> pd.DataFrame:
    return points[(points.method == curve[0]) & (points.curve == curve[1])]


# ---- shading by the method's parameter ----------------------------------------------------------
def shaded(method: str) -> bool:
    """Whether a method's circuits are shaded by its parameter: those of a swept method (ACDC's tau,
    SP's lambda), one run each.  A ranking's k is the circuit's size, which the picture shows already."""
    spec = spec_of_label(method)
    return spec is not None and spec.sweep is not None


def parameter_norms(points: pd.DataFrame) -> dict[str, mcolors.Normalize]:
    """Per shaded method: its parameter's range, on a log scale where it is all positive (thresholds
    and penalties span decades)."""
    norms = {}
    for method, group in points.groupby("method"):
        values = [float(v) for v in group["parameter"] if v is not None and not pd.isna(v)]
        if not shaded(method) or not values:
            continue
        low, high = min(values), max(values)
        if low > 0:
            norms[method] = mcolors.LogNorm(low, high if high > low else low * 10)
        else:
            norms[method] = mcolors.Normalize(low, high if high > low else low + 1)
    return norms


def shades(method: str, group: pd.DataFrame, norms: dict[str, mcolors.Normalize]) -> np.ndarray:
    """Each circuit's colour: its parameter's shade of the method's colour map, or the method's
    one colour where it is not shaded."""
    if method not in norms:
        return np.tile(method_color(method), (len(group), 1))
    norm = norms[method]
    values = pd.to_numeric(group["parameter"], errors="coerce").to_numpy(dtype=float)
    return np.atleast_2d(shade_map(method)(norm(np.nan_to_num(values, nan=norm.vmin or 0.0))))


def _parameter_ticks(norm: mcolors.Normalize) -> matplotlib.ticker.Formatter:
    """Plain numbers (0.01, 250), but powers of ten on a bar reaching below 10^-3 (ACDC's taus)."""
    powers = isinstance(norm, mcolors.LogNorm) and norm.vmin < 1e-3

    def tick(value: float, _position=None) -> str:
        exponent = math.log10(value) if value > 0 else 0.5
        if powers and exponent == round(exponent):
            return f"$10^{{{int(exponent)}}}$"
        return f"{value:g}"

    return matplotlib.ticker.FuncFormatter(tick)


def parameter_colorbars(fig, axes, points: pd.DataFrame, norms: dict[str, mcolors.Normalize]) -> None:
    """A colour bar per shaded method, right of the panels, in the methods' order."""
    # Constrained layout puts each new bar nearest the panels: add them last method first.
    for method in reversed(ordered_methods(norms)):
        spec = spec_of_label(method)
        values = sorted({float(v) for v in points[points.method == method]["parameter"].dropna()})
        norm = norms[method]
        bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=shade_map(method)), ax=axes,
                           location="right", shrink=0.8, aspect=40, pad=0.005, fraction=0.02)
        bar.set_label(spec.parameter_label or spec.parameter, fontsize=8, labelpad=2)
        if isinstance(norm, mcolors.LogNorm) and len(values) <= 8:
            bar.set_ticks(values)  # a few values: label each (a log bar over less than a decade has no ticks)
        bar.ax.yaxis.set_major_formatter(_parameter_ticks(norm))
        bar.ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        bar.ax.tick_params(labelsize=7.5)


def titles(fig, title: str, note: str = "") -> None:
    """The figure's title and, smaller and grey below it, how to read the picture; both wrapped to
    the figure's width."""
    width_pt = fig.get_figwidth() * 72
    title = "\n".join(textwrap.wrap(title, max(int(width_pt / (0.5 * 11)), 20), break_on_hyphens=False))
    note = "\n".join(textwrap.wrap(note, max(int(width_pt / (0.55 * 8)), 20), break_on_hyphens=False)) if note else ""
    fig.suptitle(title, fontsize=11)
    if note:
        fig.supxlabel(note, fontsize=8, color="dimgrey")


def _legend(ax, handles: list, loc: str) -> None:
    if handles:
        ax.legend(handles=handles, loc=loc, fontsize=7, framealpha=0.85, handlelength=2.6)


def _handle(style: CurveStyle, label: str) -> Line2D:
    return Line2D([], [], color=style.color, ls=style.linestyle, lw=min(style.linewidth, 2.2),
                  marker=style.marker, markersize=6, markerfacecolor=style.color, markeredgecolor="black",
                  markeredgewidth=0.5, label=label)


# ---- ROC ------------------------------------------------------------------------------------------
def roc_panel(ax, panel: Panel, styles: dict, norms: dict) -> list[dict]:
    """One panel's ROC: per curve the pessimistic staircase through its Pareto front, the front's
    circuits as ringed markers, the others as small dots; returns each curve's AUC."""
    level = panel.facts["level"]
    points = panel.points[panel.points[f"{level}_tpr"].notna()]
    drawn, handles = [], []
    for curve in curves_of(points):
        group = curve_points(points, curve)
        pairs = list(zip(group[f"{level}_fpr"].astype(float), group[f"{level}_tpr"].astype(float)))
        auc = roc_auc(pairs)
        first = group.iloc[0]
        drawn.append(dict(task=first.task, method=curve[0], corruption=first.corruption, metric=first.metric,
                          graph=first.graph, variant=first.variant, level=level, auc=auc, n_points=len(pairs)))
        style = styles[curve]
        xs, ys = roc_staircase(pairs)
        ax.plot(xs, ys, color=style.color, ls=style.linestyle, lw=style.linewidth, alpha=0.9,
                zorder=style.zorder, solid_capstyle="butt", label=curve_label(*curve))
        front = set(pareto_front(roc_points(pairs)))
        on_front = np.array([p in front for p in pairs])
        colours = shades(curve[0], group, norms)
        fx, fy = np.array(pairs, dtype=float).T
        size = style.markersize ** 2
        ax.scatter(fx[~on_front], fy[~on_front], c=colours[~on_front], s=size * 0.35, marker=style.marker, lw=0,
                   alpha=0.8, zorder=style.zorder + 0.01)
        ax.scatter(fx[on_front], fy[on_front], c=colours[on_front], s=size, marker=style.marker,
                   edgecolors="black", linewidths=0.6, zorder=style.zorder + 0.05)
        handles.append(_handle(style, f"{curve_label(*curve)} (AUC {auc:.2f})"))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.7, ls=":", zorder=1)
    ax.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03), aspect="equal")
    ax.set_xlabel(f"false positive rate ({LEVEL_LABELS[level]})", fontsize=8.5)
    ax.set_ylabel(f"true positive rate ({LEVEL_LABELS[level]})", fontsize=8.5)
    ax.tick_params(labelsize=7.5)
    ax.grid(alpha=0.25)
    if not drawn:
        ax.text(0.5, 0.5, "no complete runs", ha="center", va="center", color="grey", transform=ax.transAxes)
    _legend(ax, handles, "lower right")
    return drawn


def roc_figure(grid: list[list[Panel]], title: str = "ROC against the ground-truth circuit"):
    """A grid of ROC panels (rows of panels, each row as long); returns (figure, AUC of each curve
    drawn).  Panels of a row share the y label, panels of a column the x label."""
    widths = [len(row) for row in grid]
    panels = with_curves([p for row in grid for p in row])
    grid = [panels[sum(widths[:r]):sum(widths[:r + 1])] for r in range(len(grid))]
    points = pd.concat([p.points for p in panels])
    rated = points[points["edge_tpr"].notna() | points["node_tpr"].notna()]
    styles, norms = curve_styles(curves_of(rated)), parameter_norms(rated)
    n_rows, n_cols = len(grid), max(len(row) for row in grid)
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False, layout="constrained",
                             figsize=(PANEL_INCHES * n_cols + 0.6 + BAR_INCHES * len(norms),
                                      PANEL_INCHES * n_rows + 0.9))
    common, own = split_facts(panels)
    drawn = []
    for (r, c), text in zip([(r, c) for r, row in enumerate(grid) for c in range(len(row))], own):
        ax = axes[r][c]
        drawn += roc_panel(ax, grid[r][c], styles, norms)
        ax.set_title("\n".join(textwrap.wrap(text, 40, break_on_hyphens=False)), fontsize=9)
        if c > 0:
            ax.set_ylabel("")
        if r < n_rows - 1:
            ax.set_xlabel("")
    for r, row in enumerate(grid):
        for c in range(len(row), n_cols):
            axes[r][c].set_axis_off()
    parameter_colorbars(fig, axes, rated, norms)
    titles(fig, f"{title}: {common}" if common else title,
           "ringed: circuits on the Pareto front; dots: circuits off it; shade: the method's parameter (a colour bar each)")
    return fig, drawn


# ---- the metric against circuit size ---------------------------------------------------------------
def denoise(values: pd.Series) -> pd.Series:
    """Rounding noise (|v| below ROUNDING times the largest |v|, and at least below ROUNDING) as 0."""
    scale = max(float(values.abs().max()) if len(values) else 0.0, 1.0)
    return values.where(values.abs() >= ROUNDING * scale, 0.0)


def edge_axis(ax, largest: int) -> None:
    """Edge counts span orders of magnitude and include the empty circuit: symlog, plain numbers."""
    ax.set_xscale("symlog", linthresh=1, linscale=0.5)
    ticks = [0] + [m * 10 ** e for e in range(7) for m in (1, 2, 5) if m * 10 ** e <= max(largest, 1) * 1.5]
    if len(ticks) > 8:  # many decades: powers of ten only
        ticks = [t for t in ticks if t == 0 or str(t)[0] == "1"]
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlim(-0.3, max(largest, 1) * 1.6)


def _reference(points: pd.DataFrame, column: str) -> float | None:
    """A value every run of the panel shares (the empty circuit's metric), or None."""
    if column not in points:
        return None
    values = pd.to_numeric(points[column], errors="coerce").dropna().unique()
    if len(values) == 0 or not np.allclose(values, values[0], rtol=1e-6, atol=1e-12):
        return None
    return float(values[0])


def metric_panel(ax, panel: Panel, styles: dict, norms: dict) -> None:
    points = panel.points
    values = denoise(points.test_metric.astype(float))
    handles = []
    for curve in curves_of(points):
        group = curve_points(points, curve).sort_values("n_edges", kind="stable")
        style = styles[curve]
        ys = values[group.index]
        ax.plot(group.n_edges, ys, color=style.color, ls=style.linestyle, lw=1.1, alpha=0.7, zorder=style.zorder,
                label=curve_label(*curve))
        ax.scatter(group.n_edges, ys, c=shades(curve[0], group, norms), s=style.markersize ** 2 * 0.8,
                   marker=style.marker, edgecolors="black", linewidths=0.4, zorder=style.zorder + 0.05)
        handles.append(_handle(style, curve_label(*curve)))
    span = list(values)
    empty = _reference(points, "test_metric_empty")
    if empty is not None:
        ax.axhline(empty, color="grey", ls="--", lw=0.9, zorder=1, label="empty circuit")
        handles.append(Line2D([], [], color="grey", ls="--", lw=0.9, label="empty circuit"))
        span.append(empty)
    full = _reference(points, "test_metric_full")
    if full is not None:
        ax.axhline(full, color="black", ls=":", lw=0.9, zorder=1, label="full model")
        handles.append(Line2D([], [], color="black", ls=":", lw=0.9, label="full model"))
        span.append(full)
    edge_axis(ax, int(points.n_edges.max()) if len(points) else 1)
    low, high = (min(span), max(span)) if span else (0.0, 0.0)
    if high - low <= ROUNDING * max(abs(high), 1.0):  # every circuit alike: a small band around them
        pad = max(0.05 * abs(high), 0.01)
        ax.set_ylim(low - pad, high + pad)
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter(useOffset=False))
    ax.set_xlabel("edges in the circuit", fontsize=8.5)
    ax.set_ylabel(f"{metric_label(panel.facts.get('metric', ''))} on the test split", fontsize=8.5)
    ax.tick_params(labelsize=7.5)
    ax.grid(alpha=0.25)
    if points.empty:
        ax.text(0.5, 0.5, "no complete runs", ha="center", va="center", color="grey", transform=ax.transAxes)
    _legend(ax, handles, "best")


def metric_figure(panels: list[Panel], title: str = "Test metric against circuit size"):
    """One row of panels: each circuit's test metric against its number of edges (the empty circuit
    at 0), and dashed the empty circuit's, dotted the full model's."""
    panels = with_curves(panels)
    points = pd.concat([p.points for p in panels])
    styles, norms = curve_styles(curves_of(points)), parameter_norms(points)
    same_metric = len({p.facts.get("metric") for p in panels}) == 1
    fig, axes = plt.subplots(1, len(panels), squeeze=False, sharey=same_metric, layout="constrained",
                             figsize=(4.3 * len(panels) + 0.6 + BAR_INCHES * len(norms), 4.0))
    # the metric is named by the y axis
    common, own = split_facts([Panel(p.points, {k: v for k, v in p.facts.items() if k != "metric"}) for p in panels])
    for c, (panel, text) in enumerate(zip(panels, own)):
        ax = axes[0][c]
        metric_panel(ax, panel, styles, norms)
        ax.set_title("\n".join(textwrap.wrap(text, 48, break_on_hyphens=False)), fontsize=9)
        if c > 0 and same_metric:
            ax.set_ylabel("")
    parameter_colorbars(fig, axes, points, norms)
    titles(fig, f"{title}: {common}" if common else title,
           "each marker a circuit; shade: the method's parameter (a colour bar each)")
    return fig


# ---- faithfulness against the fraction of edges (MIB) ----------------------------------------------
def faithfulness_panel(ax, panel: Panel, styles: dict, table: pd.DataFrame | None = None) -> None:
    """One panel: each curve's test-split faithfulness against its circuits' fraction of the edges,
    on a log axis with MIB's ten fractions marked; the legend gives each curve's CPR and CMD."""
    from ..core.faithfulness import MIB_FRACTIONS

    points = panel.points[panel.points["fraction"].notna() & panel.points["faithfulness"].notna()]
    handles = []
    for curve in curves_of(points):
        group = curve_points(points, curve).sort_values("fraction", kind="stable")
        style = styles[curve]
        xs = group.fraction.clip(lower=MIB_FRACTIONS[0] / 2)  # the empty circuit drawn left of 0.1%
        ax.plot(xs, group.faithfulness, color=style.color, ls=style.linestyle, lw=1.1, alpha=0.8,
                marker=style.marker, ms=style.markersize * 0.7, mec="black", mew=0.4, zorder=style.zorder)
        label = curve_label(*curve)
        if table is not None:
            row = table[(table.method == curve[0]) & (table.variant == curve[1])]
            if len(row):
                note = f", {row.range.iloc[0]}" if row.range.iloc[0] else ""
                label += f" (CPR {row.cpr.iloc[0]:.3f}, CMD {row.cmd.iloc[0]:.3f}{note})"
        handles.append(_handle(style, label))
    for x in MIB_FRACTIONS:
        ax.axvline(x, color="0.85", lw=0.6, zorder=0)
    ax.axhline(1.0, color="black", ls=":", lw=0.9)
    ax.axhline(0.0, color="grey", ls="--", lw=0.9)
    ax.set_xscale("log")
    ax.set_xlim(MIB_FRACTIONS[0] / 2.5, 1.3)
    ax.set_xticks(list(MIB_FRACTIONS))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{100 * v:g}%"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.set_xlabel("fraction of the graph's edges", fontsize=8.5)
    ax.set_ylabel("faithfulness on the test split", fontsize=8.5)
    ax.grid(alpha=0.25, axis="y")
    if points.empty:
        ax.text(0.5, 0.5, "no faithfulness points", ha="center", va="center", color="grey", transform=ax.transAxes)
    _legend(ax, handles, "best")


def faithfulness_figure(panels: list[Panel], table: pd.DataFrame | None = None,
                        title: str = "Faithfulness against circuit size (MIB's fractions)"):
    """One row of panels (a task's ablations, metrics, graphs); ``table``: their CPR and CMD."""
    panels = with_curves(panels)
    points = pd.concat([p.points for p in panels])
    styles = curve_styles(curves_of(points))
    fig, axes = plt.subplots(1, len(panels), squeeze=False, sharey=True, layout="constrained",
                             figsize=(4.6 * len(panels) + 0.6, 4.0))
    common, own = split_facts(panels)
    for c, (panel, text) in enumerate(zip(panels, own)):
        ax = axes[0][c]
        sub = None
        if table is not None:
            sub = table[(table.corruption == panel.facts.get("corruption")) & (table.metric == panel.facts.get("metric"))
                        & (table.graph == panel.facts.get("graph"))]
        faithfulness_panel(ax, panel, styles, sub)
        ax.set_title("\n".join(textwrap.wrap(text, 48, break_on_hyphens=False)), fontsize=9)
    titles(fig, f"{title}: {common}" if common else title,
           "f = (m(C) - m(empty)) / (m(full) - m(empty)); rankings at MIB's fractions (pruned), sweeps at their runs' own")
    return fig
