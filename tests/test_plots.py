"""The one plotting layer (circuitfind.plots): the report and the figures draw the same method in
the same colour and marker on the same axes, a curve never joins runs of two settings, and every
task has one name."""

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import pytest

from circuitfind.figures.build import draw_metric_vs_edges, draw_roc
from circuitfind.methods.spec import get_spec
from circuitfind.plots.style import method_color, task_label
from circuitfind.report import task_metric_figure, task_roc_figure
from circuitfind.runs.points import collect_points

from test_figures import fake_run, roc_runs


def _lines(ax) -> dict:
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_report_and_fig3_draw_each_method_alike_on_the_same_axes(tmp_path):
    points = collect_points(roc_runs(tmp_path, "tracr_reverse"))
    report_ax = _panels(task_roc_figure("tracr_reverse", points))[0]  # edge level
    figure_ax = _panels(draw_roc(points, ["tracr_reverse"], ["zero"])[0])[0]
    report, figure = _lines(report_ax), _lines(figure_ax)
    assert list(report) == list(figure) == ["ACDC", "SP", "HISP"]
    for name in report:
        assert mcolors.same_color(report[name].get_color(), figure[name].get_color())
        assert report[name].get_linewidth() == figure[name].get_linewidth()
        assert list(report[name].get_xydata().ravel()) == list(figure[name].get_xydata().ravel())
    for attribute in ("get_xlim", "get_ylim", "get_xlabel", "get_ylabel", "get_aspect"):
        assert getattr(report_ax, attribute)() == getattr(figure_ax, attribute)()
    # the legends name the same curves with the same AUC (SP: 0.9 * 0.2 + 0.5 * 0.6; HISP: (0.5, 1) alone)
    assert ([t.get_text() for t in report_ax.get_legend().get_texts()]
            == [t.get_text() for t in figure_ax.get_legend().get_texts()]
            == ["ACDC (AUC 0.90)", "SP (AUC 0.48)", "HISP (AUC 0.50)"])
    plt.close("all")


def test_each_method_has_the_colour_and_marker_of_its_spec_everywhere(tmp_path):
    points = collect_points(roc_runs(tmp_path, "tracr_reverse"))
    colours = {m: method_color(m) for m in ("acdc", "sp", "hisp", "eap", "eap_ig")}
    assert len({tuple(round(c, 2) for c in colour) for colour in colours.values()}) == 5  # five hues
    for fig in (task_roc_figure("tracr_reverse", points), task_metric_figure("tracr_reverse", points),
                draw_metric_vs_edges(points, "tracr_reverse", ["zero"])):
        ax = _panels(fig)[0]
        lines = _lines(ax)
        for method, label in (("acdc", "ACDC"), ("sp", "SP"), ("hisp", "HISP")):
            assert mcolors.same_color(lines[label].get_color(), colours[method])
        handles = {t.get_text().split(" (")[0]: h for t, h in zip(ax.get_legend().get_texts(),
                                                                   ax.get_legend().legend_handles)}
        assert [handles[label].get_marker() for label in ("ACDC", "SP", "HISP")] == [
            get_spec(m).marker for m in ("acdc", "sp", "hisp")]
        plt.close(fig)


def test_runs_of_two_graphs_in_one_panel_make_two_curves(tmp_path):
    runs = [fake_run(tmp_path / "qkv", "tracr_reverse", "acdc", parameter=0.1, tpr=1.0, fpr=0.0),
            fake_run(tmp_path / "nodes", "tracr_reverse", "acdc", parameter=0.1, tpr=0.5, fpr=0.5)]
    summary = runs[1] / "summary.json"
    summary.write_text(summary.read_text().replace('"graph": "qkv"', '"graph": "nodes"'))
    fig, drawn, _ = draw_roc(collect_points(runs), ["tracr_reverse"], ["zero"])
    assert sorted((d["graph"], d["auc"]) for d in drawn) == [("nodes", 0.25), ("qkv", 1.0)]
    lines = _lines(_panels(fig)[0])
    assert set(lines) == {"ACDC [graph=nodes]", "ACDC [graph=qkv]"}
    assert lines["ACDC [graph=nodes]"].get_linestyle() != lines["ACDC [graph=qkv]"].get_linestyle()
    plt.close(fig)


@pytest.mark.parametrize("task, label", [("tracr_reverse", "tracr-reverse"), ("tracr_sort", "tracr-sort"),
                                         ("ioi", "IOI"), ("greaterthan", "Greater-Than")])
def test_one_name_per_task(task, label):
    assert task_label(task) == label


def test_the_auc_heat_map_names_tasks_and_methods_as_everywhere_else():
    import pandas as pd

    from circuitfind.plots.tables import auc_heatmap

    tasks = ["tracr_reverse", "tracr_sort"]
    aucs = pd.DataFrame([dict(task=t, method=m, corruption="zero", level=level, auc=0.25 * (i + 1))
                         for i, t in enumerate(tasks) for m in ("acdc_guided", "eap_ig") for level in ("edge", "node")])
    fig = auc_heatmap(aucs, tasks, ["zero"])
    edge = fig.axes[0]
    assert [t.get_text() for t in edge.get_yticklabels()] == ["tracr-reverse", "tracr-sort"]
    assert [t.get_text() for t in edge.get_xticklabels()] == ["ACDC\n(guided)\nzero", "EAP-IG\nzero"]
    assert sorted(t.get_text() for t in edge.texts) == ["0.25", "0.25", "0.50", "0.50"]  # each cell written out
    plt.close(fig)
