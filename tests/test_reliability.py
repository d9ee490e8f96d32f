"""Long runs that survive: kill and resume, sweeps that fill only their holes, refused conflicts."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from circuitfind.runs.pipeline import run
from circuitfind.runs.rundir import FolderConflict

from conftest import config

# A run long enough to be interrupted mid-way: ACDC on the trained induction model, small data.
INDUCTION = ["task=induction", "task.n_prompts=12", "task.seq_len=24", "task.span_len=6", "tau=0.003",
             "checkpoint.every_steps=5", "progress=false"]
# SP long enough to be interrupted (about 3 s): 400 full-batch steps on tracr-reverse, interrupted
# after its first checkpoint (step 20).
SP = ["task=tracr_reverse", "method=sp", "method.lambda_reg=1", "method.epochs=400", "checkpoint.every_steps=20",
      "progress=false"]
# What must come out byte-identical after a resume, and which summary fields must agree.
RESUMED = {"acdc": (["edges.csv", "trace.csv"], ["n_edges_kept", "metric_circuit", "config_hash", "n_edge_tests"]),
           "sp": (["edges.csv", "training.csv", "gates.csv"], ["n_edges_kept", "metric_circuit", "config_hash",
                                                               "method_details"])}


def cli(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "circuitfind.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ACDC's case takes minutes (three CLI runs on the induction model): slow.  Its quick twins: the SP case
# here (the same signal, checkpoint and resume path through the CLI) and test_checkpoint.py's in-process
# ACDC interruptions at several steps.
@pytest.mark.parametrize("method, args", [pytest.param("acdc", INDUCTION, marks=pytest.mark.slow), ("sp", SP)])
def test_sigterm_writes_a_checkpoint_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path, method, args):
    # the uninterrupted run and the one to interrupt side by side (they share nothing but the cwd)
    reference = cli(*args, f"hydra.run.dir={tmp_path}/whole", cwd=tmp_path)
    folder = tmp_path / "killed"
    process = cli(*args, f"hydra.run.dir={folder}", cwd=tmp_path)
    deadline = time.time() + 300
    while not (folder / "checkpoint.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    message = process.stderr.read()
    assert "interrupted by SIGTERM" in message and "Run the same command again to resume" in message
    assert (folder / "checkpoint.pt").exists() and not (folder / "summary.json").exists()
    assert reference.wait(timeout=600) == 0, reference.stderr.read()

    resumed = cli(*args, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    files, keys = RESUMED[method]
    for name in files:
        assert (folder / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    again = json.loads((folder / "summary.json").read_text())
    for key in keys:
        assert again[key] == whole[key], key
    assert not (folder / "checkpoint.pt").exists()


def test_a_rerun_sweep_fills_only_its_holes(tmp_path):
    """A sweep of 5 taus 'interrupted' after 2 (their folders complete) runs only the other 3."""
    taus = ["0.0001", "0.001", "0.01", "0.1", "0.5"]
    sweep = tmp_path / "sweep"  # beside the store (cwd/outputs/runs), which keeps copies of the same runs
    first = cli("-m", f"tau={','.join(taus[:2])}", "progress=false", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert first.wait(timeout=600) == 0, first.stderr.read()
    done = {p: p.stat().st_mtime_ns for p in sweep.rglob("summary.json")}
    assert len(done) == 2
    second = cli("-m", f"tau={','.join(taus)}", "progress=false", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert second.wait(timeout=600) == 0, second.stderr.read()
    summaries = {p: p.stat().st_mtime_ns for p in sweep.rglob("summary.json")}
    assert len(summaries) == 5
    assert all(summaries[p] == mtime for p, mtime in done.items())  # untouched, not recomputed
    assert sorted(json.loads(p.read_text())["tau"] for p in summaries) == sorted(map(float, taus))


def test_the_same_run_twice_is_reused_and_force_recomputes(tmp_path):
    first = run(config(), tmp_path)
    again = run(config(), tmp_path)
    assert again.get("reused") and again["config_hash"] == first["config_hash"]
    forced = run(config("force=true"), tmp_path)
    assert not forced.get("reused")


def test_batch_edges_changes_speed_not_the_runs_identity(tmp_path):
    first = run(config("method.batch_edges=1"), tmp_path)
    again = run(config("method.batch_edges=7"), tmp_path)
    assert again.get("reused") and again["config_hash"] == first["config_hash"]


def test_a_forced_rerun_that_crashes_leaves_no_complete_looking_folder(tmp_path, monkeypatch):
    import circuitfind.runs.pipeline as pipeline
    run(config(), tmp_path)

    def crash(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(pipeline, "write_result", crash)
    with pytest.raises(RuntimeError):
        run(config("force=true"), tmp_path)
    assert not (tmp_path / "summary.json").exists()


def test_a_folder_of_another_config_is_never_overwritten(tmp_path):
    run(config("tau=0.001"), tmp_path)
    before = (tmp_path / "edges.csv").read_bytes()
    with pytest.raises(FolderConflict, match="holds a completed run of a different config"):
        run(config("tau=0.01"), tmp_path)
    assert (tmp_path / "edges.csv").read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["model=nope"], "unknown model 'nope'; choose one of"),
    (["graph=nope"], "unknown graph 'nope'; choose one of"),
    (["task=induction", "model=redwood_attn_2l"], "redwood_attn_2l: the weights of ArthurConmy/redwood_attn_2l are not in"),
])
def test_more_bad_input_gets_one_line_and_exit_code_2(tmp_path, args, message):
    process = cli(*args, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert process.wait(timeout=300) == 2
    lines = process.stderr.read().strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
