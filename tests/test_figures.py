"""Paper figures and tables (circuitfind.figures): figure specs, sweep reuse, the drawings, and
one real figure built through the circuitfind command line."""

import json
import re
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from circuitfind.figures import sweeps as figure_sweeps
from circuitfind.figures.build import build, draw_metric_vs_edges, draw_roc
from circuitfind.figures.plan import FIGURES, PRESETS, FigureError, load_figure_spec, plan
from circuitfind.figures.sweeps import Sweep, complete_runs, missing_values, sweep_command
from circuitfind.figures.tables import auc_long, auc_markdown
from circuitfind.runs.points import collect_points

ROOT = Path(__file__).resolve().parents[1]
TRACR = ["tracr_reverse", "tracr_proportion"]


def fake_run(folder: Path, task="toy", method="acdc", corruption="zero", metric="kl", parameter=0.1, n_edges=5,
             tpr=0.5, fpr=0.1, test_metric=0.3, empty=4.0, curve=None):
    """A complete run folder as the pipeline writes it; ``curve``: HISP's rows (k, edges, tpr, fpr, metric)."""
    folder.mkdir(parents=True)
    summary = dict(task=task, method=method, corruption=corruption, metric=metric, graph="qkv", seed=0,
                   parameter_name={"acdc": "tau", "sp": "lambda_reg", "hisp": "k"}[method], parameter=parameter,
                   n_edges_kept=n_edges, edge_tpr=tpr, edge_fpr=fpr, node_tpr=tpr, node_fpr=fpr,
                   test=dict(metric_circuit=test_metric, metric_empty=empty, metric_full=0.0),
                   curve="curve.csv" if curve else None, config_hash=f"hash-{folder.name}")
    if curve:
        pd.DataFrame([dict(parameter=k, n_edges=n, edge_tpr=t, edge_fpr=f, node_tpr=t, node_fpr=f, metric_test=m,
                           removed="") for k, n, t, f, m in curve]).to_csv(folder / "curve.csv", index=False)
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


# ---- figure specs ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FIGURES)
def test_every_figure_spec_plans_its_sweeps_in_both_presets(name, tmp_path):
    spec = load_figure_spec(name)
    assert spec.name == name and set(PRESETS) <= set(spec.presets)
    tasks = ["induction"] if name == "fig4" else TRACR
    for preset in PRESETS:
        sweeps = plan(spec, preset, tasks, runs=tmp_path).sweeps
        assert {s.method for s in sweeps} == set(spec.methods) and {"acdc", "sp", "hisp"} <= set(spec.methods)
        assert {s.corruption for s in sweeps} == set(spec.corruptions)
        ranking = ("hisp", "eap", "eap_ig")  # one run each gives the whole curve
        assert all(bool(s.values) == (s.method not in ranking) for s in sweeps)
    if name == "tracr_suite":
        assert set(spec.methods) == {"acdc", "acdc_guided", "sp", "hisp", "eap", "eap_ig"}  # every method


def test_the_paper_preset_sweeps_the_papers_values_and_quick_trains_sp_shorter(tmp_path):
    spec = load_figure_spec("fig3")
    paper = {s.method: s for s in plan(spec, "paper", ["tracr_reverse"], runs=tmp_path).sweeps}
    np.testing.assert_allclose(paper["acdc"].values, 10 ** np.linspace(-5, -1, 21), rtol=1e-5)
    assert len(paper["sp"].values) == 32 and paper["sp"].overrides == ()
    quick = {s.method: s for s in plan(spec, "quick", ["tracr_reverse"], runs=tmp_path).sweeps}
    assert quick["acdc"].values == paper["acdc"].values
    assert set(quick["sp"].values) < set(paper["sp"].values) and "method.epochs=500" in quick["sp"].overrides
    spec.presets.quick.per_task = {"tracr_proportion": {"sp": {"values": [7]}}}  # one task's own values
    sp = {s.task: s for s in plan(spec, "quick", TRACR, runs=tmp_path).sweeps if s.method == "sp"}
    assert sp["tracr_proportion"].values == (7.0,) and sp["tracr_proportion"].overrides == quick["sp"].overrides
    assert sp["tracr_reverse"].values == quick["sp"].values


def test_tables_have_a_kl_and_a_task_metric_column_and_proportion_no_kl(tmp_path):
    sweeps = plan(load_figure_spec("tables"), "quick", TRACR, runs=tmp_path).sweeps
    metrics = {(s.task, s.metric) for s in sweeps}
    assert metrics == {("tracr_reverse", "kl"), ("tracr_reverse", "l2"), ("tracr_proportion", "l2")}
    assert len(sweeps) == 3 * 6 * 2  # (task, metric) x method x corruption


def test_tasks_without_weights_are_left_out_unless_named(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fig3 = plan(load_figure_spec("fig3"), "quick", runs=tmp_path)
    assert fig3.tasks == TRACR and set(fig3.skipped) == {"ioi", "docstring", "greaterthan"}
    assert "not in the Hugging Face cache" in fig3.skipped["ioi"]
    named = plan(load_figure_spec("fig3"), "quick", ["ioi"], corruption="zero", runs=tmp_path, extra=("tau=1",))
    assert named.tasks == ["ioi"] and not named.skipped  # named: its runs are attempted and say what is missing
    with pytest.raises(FigureError, match="no metric for task induction"):
        plan(load_figure_spec("fig3"), "quick", ["induction"], runs=tmp_path)


# ---- sweeps: folders and reuse ---------------------------------------------------------------------
def test_sweep_folders_are_named_by_settings_and_shared_between_figures(tmp_path):
    a = Sweep("tracr_reverse", "sp", "zero", "kl", (0.1, 1.0), ("method.epochs=500",), tmp_path)
    assert Sweep("tracr_reverse", "sp", "zero", "kl", (1.0, 3.0), ("method.epochs=500",), tmp_path).folder == a.folder
    assert Sweep("tracr_reverse", "sp", "zero", "kl", (0.1,), ("method.epochs=300",), tmp_path).folder != a.folder
    assert Sweep("tracr_reverse", "sp", "corrupted", "kl", (0.1,), ("method.epochs=500",), tmp_path).folder != a.folder
    fig3 = plan(load_figure_spec("fig3"), None, TRACR, "zero", runs=tmp_path).sweeps
    tables = plan(load_figure_spec("tables"), None, TRACR, runs=tmp_path).sweeps
    assert {s.folder for s in fig3} < {s.folder for s in tables}  # make tables reuses make fig3's runs


def test_only_values_without_a_complete_run_are_run_again(tmp_path):
    sweep = Sweep("tracr_reverse", "acdc", "zero", "kl", (1e-05, 0.001, 2.0), (), tmp_path)
    fake_run(sweep.folder / "tau_0.001", method="acdc", parameter=0.001)
    fake_run(sweep.folder / "tau_2", method="acdc", parameter=2)  # Hydra reads "2.0" back as an int
    (sweep.folder / "tau_1e-05").mkdir()  # a job that never finished
    (sweep.folder / "tau_1e-05" / "error.txt").write_text("Traceback ...")
    assert missing_values(sweep) == [1e-05] and set(complete_runs(sweep)) == {0.001, 2.0}
    command = sweep_command(sweep, missing_values(sweep))
    assert command[2:5] == ["circuitfind.cli", "-m", "task=tracr_reverse"]
    assert "tau=1e-05" in command and "hydra.sweep.subdir=tau_${tau}" in command
    assert f"hydra.sweep.dir={sweep.folder}" in command and "metric=kl" in command

    hisp = Sweep("tracr_reverse", "hisp", "zero", "kl", (), (), tmp_path)
    assert missing_values(hisp) == [None] and sweep_command(hisp, [None])[-1] == "hydra.sweep.subdir=run"
    fake_run(hisp.folder / "run", method="hisp", parameter=9)
    assert missing_values(hisp) == []


def test_sweeps_run_through_the_chosen_hydra_launcher(tmp_path, monkeypatch):
    sweep = Sweep("tracr_reverse", "acdc", "zero", "kl", (0.001, 0.1), (), tmp_path)
    assert sweep_command(sweep, [0.1], "joblib", 3)[-2:] == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"]
    assert sweep_command(sweep, [0.1], "slurm")[-1] == "hydra/launcher=slurm"
    assert not any("launcher" in arg for arg in sweep_command(sweep, [0.1], "basic"))
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda command, **k: commands.append(command) or subprocess.CompletedProcess(command, 0))
    lines = []
    (outcome,) = figure_sweeps.run_sweeps([sweep], jobs=2, echo=lines.append, launcher="joblib")
    assert commands[0][-2:] == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    assert "tau=0.001,0.1" in commands[0] and "through hydra/launcher=joblib, 2 at a time" in lines[0]
    assert outcome.status == "failed"  # the stand-in ran nothing: both values are still missing
    # auto, per sweep: joblib (installed with the tests) only for several jobs on more than two cores
    assert figure_sweeps.resolve_launcher("auto", n_jobs=2, cores=8) == "joblib"
    assert figure_sweeps.resolve_launcher("auto", n_jobs=1, cores=8) == "in_process"
    assert figure_sweeps.resolve_launcher("auto", n_jobs=21, cores=2) == "in_process"
    assert figure_sweeps.resolve_launcher("auto", n_jobs=12, cores=2, cost=figure_sweeps.COSTLY_JOB) == "joblib"  # SP
    assert figure_sweeps.resolve_launcher("auto", n_jobs=12, cores=1, cost=figure_sweeps.COSTLY_JOB) == "in_process"
    assert figure_sweeps.resolve_launcher("basic", n_jobs=21, cores=8) == "basic"


def test_an_in_process_sweep_runs_its_jobs_here_and_leaves_hydra_ready_for_the_next(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("started a process"))
    monkeypatch.chdir(tmp_path)  # the runs' shared store (outputs/runs) is relative to the working folder
    acdc = Sweep("tracr_proportion", "acdc", "zero", "l2", (0.001, 0.1), (), tmp_path)
    eap = Sweep("tracr_proportion", "eap", "zero", "l2", (), (), tmp_path)
    lines = []
    outcomes = figure_sweeps.run_sweeps([acdc, eap], echo=lines.append, launcher="in_process")
    assert [o.status for o in outcomes] == ["ran", "ran"] and "basic, in this process" in lines[0]
    assert set(complete_runs(acdc)) == {0.001, 0.1} and set(complete_runs(eap)) == {None}
    assert not list(acdc.folder.rglob("circuit.png"))  # figures read summaries: no drawing per run
    assert "kept" in (acdc.folder / "sweep.log").read_text()  # the jobs' output went to the sweep's log
    bad = Sweep("tracr_proportion", "acdc", "zero", "l2", (0.1,), ("method.max_edge_tests=-3",), tmp_path)
    (outcome,) = figure_sweeps.run_sweeps([bad], echo=lines.append, launcher="in_process")
    assert outcome.status == "failed" and outcome.errors and outcome.errors[0].startswith("circuitfind: error:")


def test_complete_sweeps_start_no_process(tmp_path, monkeypatch):
    sweep = Sweep("tracr_reverse", "sp", "zero", "kl", (1.0,), (), tmp_path)
    fake_run(sweep.folder / "lambda_1.0", method="sp", parameter=1.0)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("started a process"))
    (outcome,) = figure_sweeps.run_sweeps([sweep], jobs=2, echo=lambda line: None)
    assert outcome.status == "reused" and outcome.ran == []


# ---- drawings and tables from run folders ----------------------------------------------------------
def roc_runs(root: Path, task: str, corruption="zero") -> list[Path]:
    """ACDC with one circuit off its Pareto front, SP with two points, HISP with a curve."""
    return [
        fake_run(root / task / "acdc1", task, "acdc", corruption, parameter=0.01, tpr=1.0, fpr=0.2),
        fake_run(root / task / "acdc2", task, "acdc", corruption, parameter=0.1, tpr=0.5, fpr=0.0),
        fake_run(root / task / "acdc3", task, "acdc", corruption, parameter=0.05, tpr=0.5, fpr=0.3),  # beaten
        fake_run(root / task / "sp1", task, "sp", corruption, parameter=1.0, tpr=0.8, fpr=0.5),
        fake_run(root / task / "sp2", task, "sp", corruption, parameter=10.0, tpr=0.2, fpr=0.1),
        fake_run(root / task / "hisp", task, "hisp", corruption, parameter=2,
                 curve=[(3, 9, 1.0, 1.0, 0.0), (2, 4, 1.0, 0.5, 0.1), (1, 2, 0.0, 0.25, 0.5), (0, 0, 0.0, 0.0, 1.0)]),
    ]


def test_roc_figure_draws_a_staircase_per_method_and_rings_only_the_front(tmp_path):
    points = collect_points(roc_runs(tmp_path, "tracr_reverse") + roc_runs(tmp_path, "tracr_proportion"))
    fig, drawn, empty = draw_roc(points, ["tracr_reverse", "ioi", "tracr_proportion"], ["zero"])
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert empty == ["ioi"] and len(panels) == 2 and panels[0].get_title().startswith("tracr-reverse")
    aucs = {(d["task"], d["method"]): d["auc"] for d in drawn}
    assert aucs[("tracr_reverse", "acdc")] == pytest.approx(0.5 + 0.8 * 0.5)  # (0, .5) then (.2, 1)
    ax = panels[0]
    assert [line.get_label().split(" ")[0] for line in ax.get_lines()[:3]] == ["ACDC", "SP", "HISP"]
    off_front, on_front = ax.collections[0], ax.collections[1]  # ACDC: dots, then ringed markers
    assert len(off_front.get_offsets()) == 1 and len(on_front.get_offsets()) == 2
    assert len(set(map(tuple, on_front.get_facecolors()))) == 2  # two taus, two shades
    assert "ACDC threshold τ" in [a.get_ylabel() for a in fig.axes]  # one colour bar per method
    plt.close(fig)


def test_metric_figure_has_a_symlog_edge_axis_with_the_empty_circuit_at_zero(tmp_path):
    runs = [fake_run(tmp_path / c / m, "induction", m, c, parameter=p, n_edges=n, tpr=None, fpr=None,
                     test_metric=v, empty=3.9) for c in ("zero", "corrupted")
            for m, p, n, v in (("acdc", 0.01, 100, 0.5), ("sp", 30.0, 50, 1.5))]
    runs.append(fake_run(tmp_path / "zero" / "hisp", "induction", "hisp", "zero", parameter=2, empty=3.9,
                         curve=[(2, 9, None, None, 0.1), (1, 3, None, None, 2.0), (0, 0, None, None, 3.9)]))
    fig = draw_metric_vs_edges(collect_points(runs), "induction", ["zero", "corrupted"])
    zero = fig.axes[0]
    assert zero.get_xscale() == "symlog" and "KL divergence" in zero.get_ylabel()
    assert [t.get_text() for t in zero.get_legend().get_texts()] == ["ACDC", "SP", "HISP", "empty circuit",
                                                                     "full model"]
    empty = [line for line in zero.get_lines() if line.get_label() == "empty circuit"]
    assert len(empty) == 1 and empty[0].get_ydata()[0] == 3.9
    hisp = next(line for line in zero.get_lines() if line.get_label() == "HISP")
    assert list(hisp.get_xdata()) == [0, 3, 9] and list(hisp.get_ydata()) == [3.9, 2.0, 0.1]  # 0 edges at 0
    assert "zero ablation" in zero.get_title() and "corrupted ablation" in fig.axes[1].get_title()
    plt.close(fig)


def test_auc_tables_fill_the_papers_columns_and_mark_the_best(tmp_path):
    spec = load_figure_spec("tables")
    folders = []
    for corruption in ("zero", "corrupted"):
        folders += roc_runs(tmp_path / corruption, "tracr_reverse", corruption)
        folders.append(fake_run(tmp_path / corruption / "prop", "tracr_proportion", "acdc", corruption, metric="l2",
                                tpr=1.0, fpr=0.0))
    folders.append(fake_run(tmp_path / "l2", "tracr_reverse", "acdc", "zero", metric="l2", tpr=1.0, fpr=0.5))
    long = auc_long(collect_points(folders), spec, ["tracr_reverse", "tracr_proportion"])
    row = long[(long.level == "edge") & (long.task == "tracr_reverse") & (long.method == "acdc")
               & (long.corruption == "zero")].set_index("metric_kind").auc
    assert row["kl"] == pytest.approx(0.9) and row["task"] == pytest.approx(0.5)
    assert set(long[long.task == "tracr_proportion"].metric_kind) == {"task"}
    markdown = auc_markdown(long, spec, ["corrupted", "zero"])
    assert "| task | method | KL, corrupted | KL, zero | task metric, corrupted | task metric, zero |" in markdown
    lines = markdown.splitlines()
    reverse_acdc = next(line for line in lines if line.startswith("| tracr-reverse") and "| ACDC |" in line)
    assert reverse_acdc.split(" | ")[2:4] == ["**0.900**", "**0.900**"]  # ACDC beats SP and HISP here
    proportion = next(line for line in lines if line.startswith("| tracr-proportion"))
    assert "(task metric: l2)" in proportion and proportion.count("–") == 2  # no KL column for a number


# ---- through the command line ----------------------------------------------------------------------
def test_make_help_lists_the_figure_targets():
    listed = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for target in ("fig3", "fig4", "tables"):
        assert re.search(rf"make {target}\s+\S", listed)


def tiny_fig3(tmp_path: Path, sp_values: list[float]) -> Path:
    """fig3's config with sweeps small enough for a test: two taus, SP at 20 steps, HISP, EAP, EAP-IG."""
    spec = load_figure_spec("fig3")
    spec.presets.quick = dict(acdc=dict(values=[0.001, 0.5]), acdc_guided=dict(values=[0.001]), sp=dict(values=sp_values, overrides=["method.epochs=20"]),
                             hisp={}, eap={}, eap_ig={})
    path = tmp_path / "fig3.yaml"
    path.write_text(OmegaConf.to_yaml(spec))
    return path


@pytest.mark.slow  # whole sweeps through the CLI; quick twins: the planning tests above and the sweep reuse tests
def test_fig3_runs_its_sweeps_through_the_cli_then_reuses_them(tmp_path, monkeypatch):
    # lambda -1 is refused by its job (a config error): the figure must still be drawn without it.
    config, out, lines = tiny_fig3(tmp_path, [-1.0, 1.0]), tmp_path / "figures", []
    result = build("fig3", ["tracr_proportion"], "zero", config=str(config), out=out, echo=lines.append)
    assert [p.name for p in result["outputs"]] == ["fig3_zero.png", "fig3_zero.pdf", "fig3_zero_faithfulness.csv"]
    manifest = json.loads(result["manifest"].read_text())
    fig, drawn, _ = draw_roc(result["points"], ["tracr_proportion"], ["zero"])  # what the files show
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert [label.split(" (AUC")[0] for label in legend] == ["ACDC", "ACDC (guided)", "SP", "HISP", "EAP", "EAP-IG"]
    assert drawn == manifest["auc"]
    plt.close(fig)
    assert manifest["figure_spec"]["presets"]["quick"]["acdc"]["values"] == [0.001, 0.5]
    ranking = ("hisp", "eap", "eap_ig")  # one run each, its parameter the run's own k
    assert sorted((r["method"], r["parameter"]) for r in manifest["runs"] if r["method"] not in ranking) == [
        ("acdc", 0.001), ("acdc", 0.5), ("acdc_guided", 0.001), ("sp", 1.0)]
    assert all(r["config_hash"] and (Path(r["path"]) / "summary.json").is_file() for r in manifest["runs"])
    sp = next(s for s in manifest["sweeps"] if s["method"] == "sp")
    assert sp["status"] == "failed" and any("lambda_reg must be a non-negative number" in e for e in sp["errors"])
    assert {d["method"] for d in manifest["auc"]} == {"acdc", "acdc_guided", "sp", "hisp", "eap", "eap_ig"}  # the failed job cost one point

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("reran a complete sweep"))
    config = tiny_fig3(tmp_path, [1.0])  # without the failing value every sweep is complete
    again = build("fig3", ["tracr_proportion"], "zero", config=str(config), out=out, echo=lines.append)
    assert {o.status for o in again["outcomes"]} == {"reused"}
    assert len(json.loads(again["manifest"].read_text())["runs"]) == 7  # two taus, guided ACDC, SP, three rankings


def test_figure_text_stays_inside_and_methods_on_one_point_stay_visible(tmp_path):
    runs = [fake_run(tmp_path / m, "tracr_reverse", m, parameter=p, tpr=1.0, fpr=0.0)  # the same circuit
            for m, p in (("acdc", 0.01), ("sp", 1.0))]
    for fig in (draw_roc(collect_points(runs), ["tracr_reverse"], ["zero", "corrupted"])[0],
                draw_metric_vs_edges(collect_points(runs), "tracr_reverse", ["zero"])):
        fig.canvas.draw()
        renderer, frame = fig.canvas.get_renderer(), fig.bbox
        # every panel with its title, labels, ticks and legend, and the figure's own texts
        boxes = [ax.get_tightbbox(renderer) for ax in fig.axes]
        boxes += [t.get_window_extent(renderer) for t in [fig._suptitle, *fig.texts] if t is not None and t.get_text()]
        for box in boxes:
            assert box.x0 >= -1 and box.y0 >= -1 and box.x1 <= frame.x1 + 1 and box.y1 <= frame.y1 + 1, box
        ax = fig.axes[0]
        acdc, sp = [c for c in ax.collections if len(c.get_offsets())][:2]
        assert acdc.get_paths()[0] != sp.get_paths()[0] or acdc.get_sizes()[0] != sp.get_sizes()[0]
        assert acdc.get_sizes()[0] > sp.get_sizes()[0] and sp.get_zorder() > acdc.get_zorder()
        plt.close(fig)


def test_the_example_fig4_spec_on_the_trained_model_plans_every_method(tmp_path):
    spec = load_figure_spec(Path(__file__).parents[1] / "examples" / "fig4_algo_induction.yaml")
    sweeps = plan(spec, "quick", runs=tmp_path).sweeps
    assert {s.task for s in sweeps} == {"algo_induction"} and {s.metric for s in sweeps} == {"kl"}
    assert {s.method for s in sweeps} == {"acdc", "acdc_guided", "sp", "hisp", "eap", "eap_ig"}
    assert {s.corruption for s in sweeps} == {"zero", "corrupted"}
