"""How every picture names and draws things: one label per task and metric, one colour, colour map
and marker per method (from its ``MethodSpec``), one way to save (PNG and PDF).

The report (``circuitfind-report``) and the figures (``python -m circuitfind.figures``) both draw
through this module, so a method looks the same in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..methods.spec import method_labels, method_rank, spec_of_label  # noqa: E402

# Tasks named in papers by a word of their own; every other task by its config name with hyphens
# (tracr_reverse -> tracr-reverse, tracr_sort -> tracr-sort).
TASK_LABELS = {"ioi": "IOI", "docstring": "Docstring", "greaterthan": "Greater-Than", "induction": "Induction"}
METRIC_LABELS = {"kl": "KL divergence", "l2": "L2 distance", "logit_diff": "logit difference",
                 "prob_diff": "probability difference", "nll": "NLL", "frac_correct": "fraction correct"}
LEVEL_LABELS = {"edge": "edges", "node": "nodes"}
DPI = 150
# Methods that find the very same circuit draw on top of each other: each later curve is narrower,
# its markers smaller and above, so one under another still shows around it.
_WIDTHS = (4.4, 3.4, 2.6, 1.9, 1.2, 0.7)
_SIZES = (8.5, 7.0, 5.8, 4.8, 4.0, 3.3)  # marker sizes in points
_DASHES = ("-", "--", "-.", ":")  # a method's second, third ... curve (another variant, graph ...)


def task_label(task: str) -> str:
    return TASK_LABELS.get(task, task.replace("_", "-"))


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def method_label(method: str) -> str:
    """A run's method label (a method, or a variant such as ``sp_edges``) as tables and legends show it."""
    return method_labels().get(method, method)


def ordered_methods(methods) -> list[str]:
    return sorted(set(methods), key=method_rank)


def shade_map(method: str) -> mcolors.Colormap:
    """The method's colour map (``MethodSpec.cmap``) without its palest third (pale points vanish
    on white): the method is the hue, its parameter the shade."""
    spec = spec_of_label(method)
    base = plt.get_cmap(spec.cmap if spec is not None else "Greys")
    return mcolors.ListedColormap(base(np.linspace(0.35, 1.0, 256)), name=f"{method}_shade")


def method_color(method: str) -> tuple:
    """The method's one colour: lines, legends and tables."""
    return tuple(shade_map(method)(0.75))


def method_marker(method: str) -> str:
    spec = spec_of_label(method)
    return spec.marker if spec is not None else "o"


@dataclass(frozen=True)
class CurveStyle:
    color: tuple
    marker: str
    linestyle: str
    linewidth: float
    markersize: float  # points
    zorder: float


def curve_styles(curves: list[tuple[str, str]]) -> dict[tuple[str, str], CurveStyle]:
    """The style of each (method, variant) curve of one figure, in the order given (the method
    order): the method's colour and marker; its second, third ... curve dashed; each curve narrower,
    smaller and on top of the ones before it."""
    styles, seen = {}, {}
    for i, (method, variant) in enumerate(curves):
        spec = spec_of_label(method)
        family = spec.name if spec is not None else method
        nth = seen.get(family, 0)
        seen[family] = nth + 1
        styles[(method, variant)] = CurveStyle(
            color=method_color(method), marker=method_marker(method), linestyle=_DASHES[nth % len(_DASHES)],
            linewidth=_WIDTHS[min(i, len(_WIDTHS) - 1)], markersize=_SIZES[min(i, len(_SIZES) - 1)],
            zorder=3 + 0.1 * i)
    return styles


def curve_label(method: str, variant: str = "") -> str:
    return f"{method_label(method)} [{variant}]" if variant else method_label(method)


def save(fig, base: Path) -> list[Path]:
    """``base``.png and ``base``.pdf; closes the figure."""
    base = Path(base)
    paths = [base.with_name(base.name + ".png"), base.with_name(base.name + ".pdf")]
    for path in paths:
        fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return paths
