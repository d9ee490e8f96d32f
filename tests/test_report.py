"""ROC/AUC as the paper computes them, and circuitfind-report over run folders."""

import json
import math

import pandas as pd
import pytest

from circuitfind.evaluation.rates import pareto_front, roc_auc, roc_staircase
from circuitfind.runs.pipeline import run
from circuitfind.report_cli import main

from conftest import config


# ---- the area -------------------------------------------------------------------------------
def test_auc_of_the_papers_examples():
    assert roc_auc([(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)]) == 0.25
    assert roc_auc([(0.0, 0.0), (1.0, 1.0)]) == 0.0
    assert roc_auc([(0.0, 1.0)]) == 1.0
    assert roc_auc([]) == 0.0  # (0, 0) and (1, 1) are always added
    assert roc_auc([(0.25, 0.25), (0.5, 0.5)]) == 5 / 16
    assert roc_auc([(0.25, 0.25), (0.75, 0.5)]) == 4 / 16


def test_points_beaten_on_both_axes_do_not_count():
    good = [(0.1, 0.6), (0.4, 0.9)]
    assert roc_auc(good + [(0.3, 0.5), (0.5, 0.6), (0.4, 0.9)]) == roc_auc(good) == pytest.approx(0.9 * 0.6 + 0.6 * 0.3)
    front = pareto_front([(0.0, 0.0), (0.3, 0.5), (0.1, 0.6), (0.4, 0.9), (0.4, 0.9), (1.0, 1.0), (0.0, 0.0)])
    assert front == [(0.0, 0.0), (0.1, 0.6), (0.4, 0.9), (1.0, 1.0)]  # (0.3, 0.5) is beaten by (0.1, 0.6)
    assert roc_auc([(0.2, float("nan")), (0.0, 1.0)]) == 1.0  # missing rates are skipped
    with pytest.raises(ValueError, match="outside the unit square"):
        roc_auc([(1.5, 0.5)])


def test_the_staircase_is_pessimistic():
    xs, ys = roc_staircase([(0.5, 0.5)])
    area = sum((x1 - x0) * y0 for x0, x1, y0 in zip(xs, xs[1:], ys))  # left Riemann sum of the step curve
    assert area == pytest.approx(roc_auc([(0.5, 0.5)])) and (xs[-1], ys[-1]) == (1.0, 1.0)


# ---- the report -----------------------------------------------------------------------------
def fake_run(folder, method, points, task="toy", corruption="zero", curve=False):
    """A run folder as the pipeline writes it, with chosen rates (one point, or a curve)."""
    folder.mkdir(parents=True)
    first = points[0]
    summary = dict(task=task, method=method, corruption=corruption, graph="qkv", metric="kl", seed=0,
                   tau=0.1 if method == "acdc" else None, parameter_name={"acdc": "tau", "hisp": "k"}.get(method),
                   parameter=first[0], n_edges_kept=first[1], edge_tpr=first[2], edge_fpr=first[3],
                   node_tpr=first[2], node_fpr=first[3], test=dict(metric_circuit=first[4]),
                   curve="curve.csv" if curve else None)
    if curve:
        pd.DataFrame([dict(parameter=p, n_edges=n, edge_tpr=t, edge_fpr=f, node_tpr=t, node_fpr=f, metric_test=m,
                           removed="") for p, n, t, f, m in points]).to_csv(folder / "curve.csv", index=False)
    (folder / "summary.json").write_text(json.dumps(summary))


def test_report_reads_runs_and_curves_and_skips_unfinished_folders(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    fake_run(sweep / "acdc" / "0", "acdc", [(0.1, 5, 0.5, 0.0, 0.3)])
    fake_run(sweep / "acdc" / "1", "acdc", [(0.01, 9, 1.0, 0.5, 0.1)])
    fake_run(sweep / "hisp" / "0", "hisp", [(2, 4, 0.5, 0.5, 0.4), (1, 2, 0.0, 0.5, 0.5), (3, 8, 1.0, 1.0, 0.0)],
             curve=True)
    (sweep / "acdc" / "2" / ".hydra").mkdir(parents=True)  # started, never finished
    (sweep / "acdc" / "3").mkdir(parents=True)
    (sweep / "acdc" / "3" / "error.txt").write_text("Traceback ...")  # a failed job
    (sweep / "notes").mkdir()  # not a run folder at all
    main([str(sweep), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert "skipped 1 unfinished run folder(s)" in captured.err and "skipped 1 failed run folder(s)" in captured.err

    points = pd.read_csv(tmp_path / "out" / "roc_points.csv")
    assert list(points.columns[:11]) == ["task", "method", "corruption", "metric", "parameter", "n_edges", "edge_tpr",
                                         "edge_fpr", "node_tpr", "node_fpr", "test_metric"]
    assert len(points) == 5 and sorted(points[points.method == "hisp"].parameter) == [1, 2, 3]
    aucs = pd.read_csv(tmp_path / "out" / "auc.csv")
    assert list(aucs.columns[:6]) == ["task", "method", "corruption", "metric", "level", "auc"]
    auc = {(r.method, r.level): r.auc for r in aucs.itertuples()}
    assert auc[("acdc", "edge")] == pytest.approx(1 * 0.5 + 0.5 * 0.5)
    assert auc[("hisp", "edge")] == pytest.approx(0.5 * 0.5) and auc[("hisp", "node")] == auc[("hisp", "edge")]
    for name in ("roc_toy", "metric_vs_edges_toy"):  # every picture as PNG and PDF
        assert (tmp_path / "out" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (tmp_path / "out" / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
    assert "acdc" in captured.out and "0.750" in captured.out and "0.250" in captured.out


def test_runs_without_ground_truth_get_points_but_no_auc(tmp_path):
    fake_run(tmp_path / "runs" / "a", "acdc", [(0.1, 5, None, None, 0.3)], task="ioi_like")
    fake_run(tmp_path / "runs" / "b", "acdc", [(0.1, 5, 1.0, 0.0, 0.3)], task="toy")
    main([str(tmp_path / "runs")])  # default out: the first DIR
    points = pd.read_csv(tmp_path / "runs" / "roc_points.csv")
    assert len(points) == 2 and math.isnan(points[points.task == "ioi_like"].edge_tpr.iloc[0])
    assert set(pd.read_csv(tmp_path / "runs" / "auc.csv").task) == {"toy"}
    assert (tmp_path / "runs" / "metric_vs_edges_ioi_like.png").exists()
    assert not (tmp_path / "runs" / "roc_ioi_like.png").exists()


def test_a_folder_without_any_complete_run_is_an_error(tmp_path, capsys):
    (tmp_path / "empty" / "0" / ".hydra").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "empty")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"circuitfind-report: error: no complete run folder under {tmp_path / 'empty'} (1 unfinished, 0 failed)"]
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing")])
    assert "is not a folder" in capsys.readouterr().err


def test_real_runs_acdc_and_hisp_on_tracr_reverse(tmp_path, capsys):
    for i, tau in enumerate((0.001, 0.1)):
        run(config("corruption=zero", f"tau={tau}"), tmp_path / "runs" / "acdc" / str(i))
    run(config("corruption=zero", "method=hisp"), tmp_path / "runs" / "hisp" / "0")
    main([str(tmp_path / "runs")])
    aucs = pd.read_csv(tmp_path / "runs" / "auc.csv")
    acdc = aucs[(aucs.method == "acdc")].set_index("level").auc
    assert acdc["edge"] == 1.0 and acdc["node"] == 1.0  # the paper's Table 3
    hisp = aucs[(aucs.method == "hisp") & (aucs.level == "edge")]
    # 16 components in 3 tie groups (4 above the rest, 2 more, 10 at rounding level): 4 cuts, and
    # the curve's distinct circuits at MIB's fractions
    curve = pd.read_csv(tmp_path / "runs" / "hisp" / "0" / "curve.csv")
    assert curve.fraction.isna().sum() == 4
    assert 0.5 < hisp.auc.iloc[0] < 1.0 and hisp.n_points.iloc[0] == len(curve)


# ---- one curve per configuration -------------------------------------------------------------
def configured_run(folder, *overrides, points):
    """A run folder with chosen rates and the real resolved config of ``overrides`` in .hydra/."""
    from omegaconf import OmegaConf

    cfg = config(*overrides)
    fake_run(folder, cfg.method.name, points, task=cfg.task.name, corruption=cfg.corruption.name)
    (folder / ".hydra").mkdir()
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")


def test_runs_that_differ_beyond_the_swept_parameter_make_separate_labelled_curves(tmp_path):
    runs = tmp_path / "runs"
    for i, (data, tau) in enumerate([("paper", 0.1), ("paper", 0.01), ("valid", 0.1), ("valid", 0.01)]):
        configured_run(runs / f"acdc{i}", "task=tracr_proportion", f"task.data={data}", f"tau={tau}",
                       "corruption=zero", points=[(tau, 5 + i, 1.0 if data == "paper" else 0.5, 0.0, 0.1)])
    for i, (epochs, lam) in enumerate([(500, 0.1), (500, 1.0), (3000, 0.1)]):
        configured_run(runs / f"sp{i}", "task=tracr_proportion", "method=sp", f"method.epochs={epochs}",
                       f"method.lambda_reg={lam}", "corruption=zero", "progress=true",  # progress: not a setting
                       points=[(lam, 3 + i, 0.5, 0.5, 0.2)])
    main([str(runs), "--out", str(tmp_path / "out")])
    aucs = pd.read_csv(tmp_path / "out" / "auc.csv", keep_default_na=False)
    edge = aucs[aucs.level == "edge"].set_index(["method", "variant"])
    assert sorted(edge.index) == [("acdc", "task.data=paper"), ("acdc", "task.data=valid"),
                                  ("sp", "method.epochs=3000"), ("sp", "method.epochs=500")]
    assert edge.loc[("acdc", "task.data=paper"), "auc"] == 1.0 and edge.loc[("acdc", "task.data=paper"), "n_points"] == 2
    assert edge.loc[("acdc", "task.data=valid"), "auc"] == 0.5
    assert edge.loc[("sp", "method.epochs=500"), "n_points"] == 2  # two lambdas, one curve
    points = pd.read_csv(tmp_path / "out" / "roc_points.csv", keep_default_na=False)
    assert set(points.variant) == {"task.data=paper", "task.data=valid", "method.epochs=3000", "method.epochs=500"}


def test_one_configuration_swept_over_its_parameter_is_one_unlabelled_curve(tmp_path):
    for i, tau in enumerate((0.1, 0.01, 0.001)):
        configured_run(tmp_path / "runs" / str(i), "corruption=zero", f"tau={tau}", f"device={'cpu'}",
                       points=[(tau, 5 + i, 0.5 + 0.2 * i, 0.1, 0.1)])
    main([str(tmp_path / "runs")])
    aucs = pd.read_csv(tmp_path / "runs" / "auc.csv", keep_default_na=False)
    assert list(aucs.variant) == ["", ""] and list(aucs.n_points) == [3, 3]


# ---- plots: text inside, coinciding points visible, rounding shown as 0 ----------------------
def _inside(fig, artist) -> bool:
    if not artist.get_text():
        return True
    box = artist.get_window_extent(fig.canvas.get_renderer())
    return box.x0 >= -1 and box.y0 >= -1 and box.x1 <= fig.bbox.x1 + 1 and box.y1 <= fig.bbox.y1 + 1


def test_plot_text_stays_inside_and_coinciding_curves_stay_visible(tmp_path):
    import matplotlib.pyplot as plt

    from circuitfind.report import task_metric_figure, task_roc_figure
    from circuitfind.runs.points import collect_points

    same = [(0.1, 5, 1.0, 0.0, -4.7e-17), (0.01, 9, 1.0, 0.5, 0.0)]  # two methods on the very same points
    fake_run(tmp_path / "a" / "0", "acdc", same[:1], task="a_task_with_a_rather_long_name_for_its_title")
    fake_run(tmp_path / "a" / "1", "acdc", same[1:], task="a_task_with_a_rather_long_name_for_its_title")
    fake_run(tmp_path / "h" / "0", "hisp", same, task="a_task_with_a_rather_long_name_for_its_title", curve=True)
    points = collect_points(sorted(p.parent for p in tmp_path.rglob("summary.json")))
    task = points.task.iloc[0]
    roc, metric = task_roc_figure(task, points), task_metric_figure(task, points)
    for fig in (roc, metric):
        fig.canvas.draw()
        texts = [fig._suptitle, fig._supxlabel]
        texts += [t for ax in fig.axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label)]
        texts += [t for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        assert all(_inside(fig, t) for t in texts), [t.get_text() for t in texts if not _inside(fig, t)]
        assert len(fig._suptitle.get_text().splitlines()) <= 2
    ax = metric.axes[0]
    acdc, hisp = (next(line for line in ax.get_lines() if line.get_label() == name) for name in ("ACDC", "HISP"))
    assert list(acdc.get_ydata()) == [0.0, 0.0]  # -4.7e-17 is rounding: drawn as 0
    low, high = ax.get_ylim()
    assert low < 0.0 < high and high - low <= 0.1  # every circuit exact: a narrow band around 0, not -1..1
    dots_acdc, dots_hisp = ax.collections[:2]
    assert dots_acdc.get_paths()[0] != dots_hisp.get_paths()[0]  # each method its own marker
    assert dots_acdc.get_sizes()[0] > dots_hisp.get_sizes()[0] and dots_hisp.get_zorder() > dots_acdc.get_zorder()
    edge = roc.axes[0]
    acdc, hisp = (next(line for line in edge.get_lines() if line.get_label() == name) for name in ("ACDC", "HISP"))
    assert list(acdc.get_xydata()[:, 1]) == list(hisp.get_xydata()[:, 1])  # the same staircase ...
    assert acdc.get_linewidth() >= hisp.get_linewidth() + 0.6 and hisp.get_zorder() > acdc.get_zorder()  # ... both seen
    plt.close(roc)
    plt.close(metric)


def test_metric_full_read_off_the_clean_logits_equals_the_full_circuits_forward(tmp_path):
    from circuitfind.runs.pipeline import build_problem

    cfg = config("task=tracr_proportion", "corruption=zero", "method=canonical")
    summary = run(cfg, tmp_path)
    problem = build_problem(cfg)
    for split, numbers in (("validation", summary), ("test", summary["test"])):
        assert numbers["metric_full"] == pytest.approx(problem.evaluate(problem.graph.full_mask(), split), abs=1e-12)


def test_report_gives_cpr_and_cmd_per_method(tmp_path, capsys):
    for i, tau in enumerate((0.001, 100.0)):  # a circuit, and the empty one
        run(config("corruption=zero", f"tau={tau}"), tmp_path / "runs" / "acdc" / str(i))
    run(config("corruption=zero", "method=eap"), tmp_path / "runs" / "eap" / "0")
    main([str(tmp_path / "runs")])
    printed = capsys.readouterr().out
    assert "CPR" in printed and "CMD" in printed
    table = pd.read_csv(tmp_path / "runs" / "faithfulness.csv").set_index("method")
    # EAP: the trapezoid rule by hand over its curve's points at MIB's fractions (test split)
    curve = pd.read_csv(tmp_path / "runs" / "eap" / "0" / "curve.csv")
    at = curve[curve.fraction.notna()].sort_values("fraction")
    xs, fs = at.fraction.tolist(), at.faithfulness_test.tolist()
    cpr = sum((x2 - x1) * (f1 + f2) / 2 for x1, x2, f1, f2 in zip(xs, xs[1:], fs, fs[1:]))
    cmd = sum((x2 - x1) * (abs(1 - f1) + abs(1 - f2)) / 2 for x1, x2, f1, f2 in zip(xs, xs[1:], fs, fs[1:]))
    assert xs[0] == 0.001 and xs[-1] == 1.0
    assert table.loc["eap", "cpr"] == pytest.approx(cpr) and table.loc["eap", "cmd"] == pytest.approx(cmd)
    assert pd.isna(table.loc["eap", "range"])  # the whole range
    # ACDC: its two runs' circuits at their own fractions, integrated over what they cover
    assert table.loc["acdc", "n_points"] == 2 and isinstance(table.loc["acdc", "range"], str)
    assert (tmp_path / "runs" / "faithfulness_tracr_reverse.png").exists()
    # one printed table: each method's row holds its AUCs and, beside them, its CPR and CMD
    header = next(line for line in printed.splitlines() if "edge AUC" in line)
    assert header.split() == ["edge", "AUC", "node", "AUC", "CPR", "CMD", "range"]
    aucs = pd.read_csv(tmp_path / "runs" / "auc.csv").set_index(["method", "level"]).auc
    eap_row = next(line for line in printed.splitlines() if " eap " in f" {line} ")
    assert f"{aucs['eap', 'edge']:.3f}" in eap_row and f"{cpr:.3f}" in eap_row and f"{cmd:.3f}" in eap_row
