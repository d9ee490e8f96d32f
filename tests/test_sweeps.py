"""threshold=paper: the paper's sweep values per task and method, and sweeps through the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from circuitfind.cli import group_options
from circuitfind.runs.pipeline import ConfigError, compose_config, run
from circuitfind.report_cli import main as report_main

from conftest import config

# The paper's ACDC thresholds per task: 10 ** linspace(lo, hi, n).
PAPER_ACDC = {
    "tracr_reverse": (-5, -1, 21), "tracr_proportion": (-5, -1, 21), "ioi": (-6, 0, 31),
    "greaterthan": (-3, -1, 21), "docstring": (-4, 0, 21), "induction": (-4, 0, 21),
}
PAPER_SP = [0.01, 0.0158, 0.0251, 0.0398, 0.0631, 0.1, 0.158, 0.251, 0.398, 0.631, 1,
            *range(2, 11), *range(30, 251, 20)]


def compose_sweep(*overrides):
    return compose_config(*overrides, return_hydra_config=True)


def sweep_params(cfg) -> dict:
    params = cfg.hydra.sweeper.params or {}
    return {key: str(params[key]) for key in params}


def values(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


@pytest.mark.parametrize("task", group_options("task"))
def test_every_task_carries_the_papers_acdc_sweep(task):
    params = sweep_params(compose_sweep(f"task={task}", "method=acdc", "threshold=paper"))
    assert set(params) == {"tau", "metric", "threshold.swept_for"}
    assert params["threshold.swept_for"] == f"{task}/acdc"
    taus = values(params["tau"])
    assert len(taus) > 1, f"configs/task/{task}.yaml needs task.sweeps.acdc (a comma-separated list of taus)"
    if task in PAPER_ACDC:
        np.testing.assert_allclose(taus, 10 ** np.linspace(*PAPER_ACDC[task]), rtol=1e-5)


@pytest.mark.parametrize("task", ["tracr_reverse", "tracr_proportion"])
def test_sp_sweeps_the_papers_lambdas_and_hisp_makes_one_run(task):
    params = sweep_params(compose_sweep(f"task={task}", "method=sp", "threshold=paper"))
    assert values(params["method.lambda_reg"]) == PAPER_SP and len(PAPER_SP) == 32
    assert params["metric"] == "null" and params["threshold.swept_for"] == f"{task}/sp"
    assert sweep_params(compose_sweep(f"task={task}", "method=hisp", "threshold=paper")) == {}
    assert sweep_params(compose_sweep(f"task={task}", "method=acdc")) == {}  # threshold=none: no sweep


def test_paper_runs_refuse_values_resolved_for_another_task_or_outside_a_sweep(tmp_path):
    def cfg(*overrides):
        return config("threshold=paper", *overrides)

    with pytest.raises(ConfigError, match="threshold=paper is a sweep: run it with -m"):
        run(cfg(), tmp_path)
    with pytest.raises(ConfigError, match="threshold=paper sweeps one task and one method per command; this job "
                                          r"\(tracr_proportion/acdc\) got the values of tracr_reverse/acdc"):
        run(cfg("task=tracr_proportion", "threshold.swept_for=tracr_reverse/acdc"), tmp_path)
    with pytest.raises(ConfigError, match="got the values of tracr_reverse/acdc"):
        run(cfg("method=sp", "threshold.swept_for=tracr_reverse/acdc"), tmp_path)
    assert not (tmp_path / "summary.json").exists()


def cli(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "circuitfind.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_acdc_paper_sweep_on_tracr_reverse_has_edge_auc_one(tmp_path):
    """The issue's acceptance run: 21 jobs, then the report gives the paper's Table 3 value."""
    sweep = tmp_path / "sweep"
    result = cli("-m", "task=tracr_reverse", "method=acdc", "corruption=zero", "threshold=paper", "progress=false",
                 f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summaries = sorted(sweep.rglob("summary.json"))  # wherever hydra.sweep.subdir puts each job
    taus = sorted(json.loads(path.read_text())["tau"] for path in summaries)
    np.testing.assert_allclose(taus, 10 ** np.linspace(-5, -1, 21), rtol=1e-5)
    report_main([str(sweep)])
    aucs = pd.read_csv(sweep / "auc.csv").set_index("level")
    assert aucs.loc["edge", "auc"] == 1.0 and aucs.loc["edge", "n_points"] == 21
    assert (sweep / "roc_tracr_reverse.png").is_file()


# ---- each sweep in its own folder, complete runs shared through the store --------------------
def test_a_sweep_gets_its_own_folder_by_default():
    from circuitfind.runs.rundir import config_hash

    cfg = compose_sweep("tau=0.1")
    hydra = cfg.hydra
    assert hydra.sweep.dir.startswith("outputs/multirun/") and "outputs/runs" not in hydra.sweep.dir
    assert hydra.sweep.subdir == f"tracr_reverse/acdc/{config_hash(cfg)}"  # run folders still keyed by config
    assert hydra.run.dir.startswith("outputs/runs/")  # a single run lives in the store itself


def test_store_copies_complete_runs_into_a_sweep_and_takes_new_ones(tmp_path):
    from circuitfind.runs.rundir import copy_run, publish_run, read_summary, store_folder

    cfg = config("corruption=zero", "tau=0.1")
    single = tmp_path / "outputs" / "runs" / "tracr_reverse" / "acdc" / "somehash"
    summary = run(cfg, single)
    assert store_folder(tmp_path / "outputs" / "runs", cfg, summary["config_hash"]).parent == single.parent
    job = tmp_path / "multirun" / "a" / "job"
    assert not copy_run(single, job, "another_config")  # never another config's results
    assert copy_run(single, job, summary["config_hash"])
    assert read_summary(job) == read_summary(single)
    assert (job / "edges.csv").read_bytes() == (single / "edges.csv").read_bytes()
    assert not copy_run(job, job, summary["config_hash"])  # a folder is not copied onto itself

    store_run = tmp_path / "store" / "tracr_reverse" / "acdc" / summary["config_hash"]
    assert publish_run(job, store_run, summary["config_hash"])
    assert read_summary(store_run)["config_hash"] == summary["config_hash"]
    assert not publish_run(job, store_run, summary["config_hash"])  # the store keeps the first copy
    assert [p.name for p in store_run.parent.iterdir()] == [summary["config_hash"]]  # no staging left


@pytest.mark.slow
def test_two_sweeps_report_apart_and_share_their_common_run(tmp_path):
    first = cli("-m", "corruption=zero", "tau=0.1,0.01", "progress=false", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    sweeps = sorted((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 1 and len(list(sweeps[0].rglob("summary.json"))) == 2
    assert len(list((tmp_path / "outputs" / "runs").rglob("summary.json"))) == 2  # published to the store
    second = cli("-m", "corruption=zero", "tau=0.01,0.001", "progress=false",
                 f"hydra.sweep.dir={tmp_path}/second", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "copied this config's complete run" in second.stdout + second.stderr
    shared = {json.loads(p.read_text())["config_hash"]: p.parent for p in sweeps[0].rglob("summary.json")}
    for path in (tmp_path / "second").rglob("summary.json"):
        if json.loads(path.read_text())["tau"] == 0.01:  # the same config: copied, not recomputed
            twin = shared[json.loads(path.read_text())["config_hash"]]
            assert path.read_bytes() == (twin / "summary.json").read_bytes()
    report_main([str(tmp_path / "second")])
    points = pd.read_csv(tmp_path / "second" / "roc_points.csv")
    assert sorted(points.parameter) == [0.001, 0.01]  # exactly that sweep
