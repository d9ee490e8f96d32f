"""Sweeps through Hydra's launchers (the `launchers` extra): joblib on one machine, submitit for SLURM
or its local executor.  Each job still lands in its config's hash folder."""

import json
import os
import subprocess
import sys

import pytest

from circuitfind.runs.pipeline import compose_config


def sweep(tmp_path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "circuitfind.cli", "-m", "progress=false", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=timeout)


def summaries(tmp_path) -> dict[float, dict]:
    found = [json.loads(p.read_text()) for p in tmp_path.rglob("summary.json")]
    return {s["tau"]: s for s in found}


def test_slurm_launcher_config_has_cluster_options():
    cfg = compose_config("hydra/launcher=slurm", "hydra.launcher.partition=gpu", return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu"
    assert launcher.gpus_per_node == 1 and launcher.timeout_min > 0 and launcher.mem_gb > 0


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launcher_configs_compose(launcher):
    cfg = compose_config(f"hydra/launcher={launcher}", return_hydra_config=True)
    assert "Launcher" in cfg.hydra.launcher._target_


def test_joblib_sweep_in_process(tmp_path):
    """The quick twin of the slow tests below: joblib with one job runs the sweep in this process's child."""
    result = sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=1", "tau=0.001,0.1")
    assert result.returncode == 0, result.stderr[-2000:]
    runs = summaries(tmp_path)
    assert set(runs) == {0.001, 0.1}
    assert runs[0.001]["n_edges_kept"] >= runs[0.1]["n_edges_kept"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["hydra/launcher=joblib hydra.launcher.n_jobs=2",
                                      "hydra/launcher=submitit_local"])
def test_parallel_launchers_run_every_job(tmp_path, launcher):
    first, second = tmp_path / "first", tmp_path / "second"
    result = sweep(tmp_path, *launcher.split(), "tau=0.001,0.01,0.1", f"hydra.sweep.dir={first}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert set(summaries(first)) == {0.001, 0.01, 0.1}
    again = sweep(tmp_path, *launcher.split(), "tau=0.001,0.01,0.1", f"hydra.sweep.dir={second}")
    assert again.returncode == 0, again.stderr[-2000:]
    # every job of the second sweep is the first's run copied from the store, not recomputed (a
    # recomputed run would have its own wall time); the jobs' logs may live with the launcher (submitit)
    before, after = summaries(first), summaries(second)
    assert set(after) == {0.001, 0.01, 0.1} and all(after[t]["complete"] for t in after)
    assert all((after[t]["config_hash"], after[t]["wall_s"]) == (before[t]["config_hash"], before[t]["wall_s"])
               for t in after)
