"""Ctrl-C (SIGINT) and SIGTERM at any phase of a run: one line, exit 130 / 143, what the run finished
kept as an unfinished run that the next run goes on from, never a folder that looks complete."""

import json
import os
import signal
import subprocess
import sys

import pytest

import circuitfind.runs.pipeline as pipeline
from circuitfind.core.checkpoint import CheckpointUnreadable, Checkpointer, RunInterrupted
from circuitfind.methods.base import Problem
from circuitfind.runs.finished import result_from_state, result_state
from circuitfind.runs.pipeline import run

from conftest import config

EAP = ("method=eap",)


def signal_on_call(monkeypatch, owner, name, n, signum=signal.SIGINT):
    """Send this process ``signum`` (a real signal, handled as Ctrl-C would be) during the ``n``-th
    call of ``owner.name``."""
    original, calls = getattr(owner, name), []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    return calls


def files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_ctrl_c_mid_curve_leaves_no_result_and_the_next_run_completes(tmp_path, monkeypatch):
    """EAP's scores are seconds of work and its ranking cannot be checkpointed: Ctrl-C during the
    curve's evaluation keeps nothing, and the next run computes the same run from the start."""
    whole = run(config(*EAP), tmp_path / "whole")
    folder = tmp_path / "stopped"
    in_curve, evaluate = [], Problem.evaluate

    def curve(*args, **kwargs):
        in_curve.append(1)
        return evaluate_curve(*args, **kwargs)

    def evaluate_in_curve(self, *args, **kwargs):  # a real SIGINT at the curve's third circuit
        if in_curve:
            in_curve.append(1)
            if len(in_curve) == 4:
                os.kill(os.getpid(), signal.SIGINT)
        return evaluate(self, *args, **kwargs)

    evaluate_curve = pipeline._evaluate_curve
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "_evaluate_curve", curve)
        patch.setattr(Problem, "evaluate", evaluate_in_curve)
        with pytest.raises(RunInterrupted) as stopped:
            run(config(*EAP), folder)
    assert len(in_curve) == 4 and stopped.value.signal_name == "SIGINT" and not stopped.value.resumable
    assert str(stopped.value) == ("interrupted by SIGINT while evaluating the circuit on the validation and test "
                                  "prompts; eap's scores are not kept (seconds of work): the next run computes them "
                                  "again")
    assert files(folder) == []  # no summary.json, no half-written result
    again = run(config(*EAP), folder)
    assert again["resumed_from"] is None and whole["resumed_from"] is None
    for name in ("edges.csv", "curve.csv", "circuit.json"):
        assert (folder / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    for key in ("n_edges_kept", "metric_circuit", "test", "config_hash"):
        assert again[key] == whole[key], key


def test_ctrl_c_after_acdc_keeps_its_result_and_the_next_run_evaluates_it(tmp_path, monkeypatch):
    whole = run(config(), tmp_path / "whole")
    folder = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        signal_on_call(patch, Problem, "evaluate", 2)  # the evaluation phase's second circuit
        with pytest.raises(RunInterrupted) as stopped:
            run(config(), folder)
    assert stopped.value.resumable and str(stopped.value) == (
        f"interrupted by SIGINT while evaluating the circuit on the validation and test prompts; acdc's finished "
        f"result is saved in {folder / 'checkpoint.pt'}, and the next run evaluates it")
    assert files(folder) == ["checkpoint.pt"]  # no summary.json, no half-written result

    def no_method(*args, **kwargs):
        raise AssertionError("the method ran again")

    monkeypatch.setattr("circuitfind.methods.acdc.acdc", no_method)
    again = run(config(), folder)
    assert again["resumed_from"] == "finished" and "method" not in again["timings"]
    assert again["method_total_s"] > 0 and whole["method_total_s"] == whole["timings"]["method"]
    for name in ("edges.csv", "trace.csv", "circuit.json"):
        assert (folder / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    for key in ("n_edges_kept", "metric_circuit", "test", "method_details", "config_hash"):
        assert again[key] == whole[key], key
    assert not (folder / "checkpoint.pt").exists()


@pytest.mark.parametrize("where, signum, message", [
    ("build_problem", signal.SIGINT, "interrupted by SIGINT while building the tracr_reverse task and its "
                                     "tracr_reverse model; nothing was finished to keep"),
    ("_split_metrics", signal.SIGTERM, "interrupted by SIGTERM while evaluating the circuit on the validation and "
                                       "test prompts; acdc's finished result is saved in"),
])
def test_a_signal_in_any_phase_is_one_interruption(tmp_path, monkeypatch, where, signum, message):
    signal_on_call(monkeypatch, pipeline, where, 1, signum)
    # the handlers the run found (a job started in the background of a shell inherits SIGINT ignored)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunInterrupted, match=message) as stopped:
        run(config(), tmp_path)
    assert stopped.value.signal_name == signal.Signals(signum).name
    assert stopped.value.resumable == (where != "build_problem")
    assert not (tmp_path / "summary.json").exists()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # the handlers are restored


def test_a_resumed_acdc_run_says_so_and_counts_both_parts_of_its_method_time(tmp_path, monkeypatch, caplog):
    overrides = ("checkpoint.every_steps=5",)
    whole = run(config(*overrides), tmp_path / "whole")
    folder = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        signal_on_call(patch, Checkpointer, "step", 12)
        with pytest.raises(RunInterrupted, match="interrupted by SIGINT after 12 steps of acdc; checkpoint saved in"):
            run(config(*overrides), folder)
    earlier = Checkpointer(folder, whole["config_hash"]).read()["method_s"]
    assert earlier > 0
    with caplog.at_level("INFO", logger="circuitfind"):
        again = run(config(*overrides), folder)
    assert "resuming from step 12" in caplog.text
    assert again["resumed_from"] == 12
    assert again["method_total_s"] == pytest.approx(earlier + again["timings"]["method"], abs=1e-3)
    assert (folder / "edges.csv").read_bytes() == (tmp_path / "whole" / "edges.csv").read_bytes()


def test_an_unreadable_checkpoint_is_one_line_that_says_how_to_start_over(tmp_path):
    first = run(config(), tmp_path / "whole")
    folder = tmp_path / "broken"
    folder.mkdir()
    Checkpointer(folder, first["config_hash"]).save({"x": 1})
    data = (folder / "checkpoint.pt").read_bytes()
    (folder / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointUnreadable) as error:
        run(config(), folder)
    message = str(error.value)
    assert "\n" not in message and str(folder / "checkpoint.pt") in message
    assert message.startswith("cannot read the checkpoint") and "start over with resume=false" in message
    assert run(config("resume=false"), folder)["n_edges_kept"] == first["n_edges_kept"]


@pytest.mark.parametrize("method", [("method=sp", "method.epochs=30"), ("method=acdc",)])
def test_a_finished_result_survives_the_checkpoint_unchanged(tmp_path, method):
    import dataclasses

    from circuitfind.methods.spec import get_spec

    cfg = config(*method)
    problem = pipeline.build_problem(cfg)
    spec = get_spec(cfg.method.name)
    result = spec.function()(problem, **dataclasses.asdict(pipeline.validate(cfg)))
    Checkpointer(tmp_path, "abc").save(result_state(result), finished=True)
    back = result_from_state(problem.graph, Checkpointer(tmp_path, "abc").finished())
    assert back.scores.equal(result.scores) and back.circuit.values.equal(result.circuit.values)
    assert (back.parameter, back.trace, back.tables, back.details, back.label) == \
        (result.parameter, result.trace, result.tables, result.details, result.label)
    assert result.trace or result.tables  # something beyond the scores went through


def test_a_ranking_is_not_checkpointed():
    cfg = config(*EAP)
    problem = pipeline.build_problem(cfg)
    from circuitfind.methods.attribution import eap

    assert eap(problem).ranking is not None and result_state(eap(problem)) is None


def cli(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "circuitfind.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


# EAP on the induction model with 200 prompts a split: its curve's evaluation lasts a few seconds.
# Two CLI runs (imports and the model each time): slow.  Its quick twin is the first test above (a
# real SIGINT during the curve, in-process).
INDUCTION_EAP = ["task=induction", "method=eap", "task.n_prompts=200"]


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_mid_curve_then_the_next_run_completes(tmp_path):
    import threading

    folder = tmp_path / "run"
    process = cli(*INDUCTION_EAP, f"hydra.run.dir={folder}", cwd=tmp_path)
    stderr, in_curve = [], threading.Event()

    def read():  # tqdm's bars end in \r, not \n: read what comes, as it comes
        while chunk := os.read(process.stderr.fileno(), 4096):
            stderr.append(chunk.decode(errors="replace"))
            if "curve:" in "".join(stderr[-2:]):
                in_curve.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert in_curve.wait(timeout=300), "".join(stderr)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert process.wait(timeout=120) == 130
    reader.join(timeout=10)
    text = "".join(stderr)
    ours = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip().startswith("circuitfind:")]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert ours == ["circuitfind: interrupted by SIGINT while evaluating the circuit on the validation and test "
                    "prompts; eap's scores are not kept (seconds of work): the next run computes them again. Run "
                    "the same command again to start over."], text
    assert sorted(p.name for p in folder.iterdir()) == [".hydra", "cli.log"]  # nothing that looks like a result

    again = cli(*INDUCTION_EAP, "progress=false", f"hydra.run.dir={folder}", cwd=tmp_path)
    assert again.wait(timeout=600) == 0, again.stderr.read()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["resumed_from"] is None and summary["complete"] and summary["curve"] == "curve.csv"
