"""The command line and the run folder, as a user meets them."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from circuitfind.core.checkpoint import RunInterrupted
from circuitfind.runs.pipeline import ConfigError, run
from circuitfind.tasks import TaskData

from conftest import config


def cli(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "circuitfind.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_default_run_writes_a_complete_run_folder(tmp_path):
    result = cli("progress=false", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "run"
    summary = json.loads((folder / "summary.json").read_text())
    required = {"task", "method", "corruption", "tau", "seed", "n_edges_total", "n_edges_kept", "metric_full",
                "metric_circuit", "edge_tpr", "edge_fpr", "node_tpr", "node_fpr", "n_forward", "wall_s",
                "circuitfind_version"}
    assert required <= summary.keys()
    assert (summary["task"], summary["method"], summary["corruption"]) == ("tracr_reverse", "acdc", "zero")
    assert summary["position_order"] is None  # zero ablation has no corrupted run to shuffle
    assert summary["activation_device"] == {"setting": "auto", "validation": "model", "test": "model"}
    assert (summary["n_edges_total"], summary["n_edges_kept"]) == (106, 15)
    assert (summary["edge_tpr"], summary["edge_fpr"]) == (1.0, 0.0)
    edges = list(csv.DictReader(open(folder / "edges.csv")))
    assert list(edges[0]) == ["edge", "sender", "receiver", "score", "kept", "canonical"]
    assert len(edges) == 106 and sum(int(e["kept"]) for e in edges) == 15
    assert all(e["kept"] == e["canonical"] for e in edges)
    trace = list(csv.DictReader(open(folder / "trace.csv")))
    assert list(trace[0]) == ["step", "edge", "delta", "loss", "kept", "n_edges"]
    assert len(trace) == summary["n_edge_tests"] > 0
    batching = summary["method_details"]  # tracr is tiny: auto batches, fewer forwards than tests
    assert batching["batch_edges"] > 1 and 0 < batching["n_test_forwards"] < summary["n_edge_tests"]
    assert (folder / ".hydra" / "config.yaml").is_file()


@pytest.mark.parametrize("args, message", [
    (["task=nope"], "unknown task 'nope'; choose one of"),
    (["method=nope"], "unknown method 'nope'; choose one of"),
    (["corruption=nope"], "unknown corruption 'nope'; choose one of"),
    (["tau=0"], "tau must be a positive number, got 0"),
    (["tau=-0.5"], "tau must be a positive number, got -0.5"),
    (["tau=abc"], "tau must be a positive number, got 'abc'"),
    (["method=sp", "method.lambda_reg=-1"], "lambda_reg must be a non-negative number, got -1"),
    (["method=hisp", "method.k=-3"], "k must be auto, all or a non-negative integer, got -3"),
    (["model.activation_device=gpu"], "model.activation_device must be auto, model or cpu, got 'gpu'"),
])
def test_bad_input_gets_one_line_and_a_nonzero_exit(tmp_path, args, message):
    result = cli(*args, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_failing_job_does_not_sink_the_sweep(tmp_path):
    result = cli("-m", "tau=0.001,-1", "progress=false", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summaries = list((tmp_path / "sweep").rglob("summary.json"))
    errors = list((tmp_path / "sweep").rglob("error.txt"))
    assert len(summaries) == 1 and len(errors) == 1 and summaries[0].parent != errors[0].parent
    assert "tau must be a positive number" in errors[0].read_text()


def test_tracr_proportion_and_seeds_through_the_pipeline(tmp_path):
    summary = run(config("task=tracr_proportion", "seed=3"), tmp_path / "a")
    assert (summary["task"], summary["n_edges_total"], summary["seed"]) == ("tracr_proportion", 38, 3)
    assert summary["edge_fpr"] == 0.0
    again = run(config("task=tracr_proportion", "seed=3"), tmp_path / "b")
    assert (tmp_path / "a" / "edges.csv").read_bytes() == (tmp_path / "b" / "edges.csv").read_bytes()
    assert again["n_edges_kept"] == summary["n_edges_kept"] and again["metric_circuit"] == summary["metric_circuit"]


def test_canonical_method_reports_the_ground_truth(tmp_path):
    summary = run(config("method=canonical"), tmp_path)
    assert (summary["n_edges_kept"], summary["edge_tpr"], summary["edge_fpr"]) == (15, 1.0, 0.0)


def test_an_interrupted_run_leaves_no_summary(tmp_path, monkeypatch):
    import circuitfind.runs.pipeline as pipeline

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "write_result", crash)  # the run is killed while its files are written
    with pytest.raises(RunInterrupted, match="while writing the run folder; acdc's finished result is saved"):
        run(config(), tmp_path)
    assert not (tmp_path / "summary.json").exists() and (tmp_path / "checkpoint.pt").is_file()
    assert not any(p.name.startswith(".") and "tmp" in p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize("overrides, message", [
    (["tau=-1"], "tau must be a positive number"),
    (["method.max_edge_tests=-2"], "max_edge_tests must be a non-negative integer or null, got -2"),
    (["method.abs_delta=maybe"], "abs_delta must be true or false, got 'maybe'"),
    (["method=sp", "method.epochs=0.5"], "epochs must be a non-negative integer, got 0.5"),
    (["method=sp", "method.lr=0"], "lr must be a positive number, got 0"),
    (["method=hisp", "method.max_points=1"], "max_points must be null or an integer of at least 2"),
    (["task=induction", "corruption.shuffle_positions=true"],
     "shuffle_positions needs separate token and positional embeddings .* model induction_2l has none"),
    (["corruption.shuffle_positions=sometimes"], "shuffle_positions must be true or false, got 'sometimes'"),
])
def test_config_errors_come_before_any_model_is_loaded(tmp_path, monkeypatch, overrides, message):
    import circuitfind.runs.pipeline as pipeline
    monkeypatch.setattr(pipeline, "build_task", lambda *a, **k: pytest.fail("loaded a task"))
    with pytest.raises(ConfigError, match=message):
        run(config(*overrides), tmp_path)


def test_prompts_of_unequal_shape_are_refused():
    with pytest.raises(ValueError, match="must have the same shape"):
        TaskData(torch.zeros(3, 5, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="metric positions fall outside the prompts"):
        TaskData(torch.zeros(3, 5, dtype=torch.long), torch.zeros(3, 5, dtype=torch.long), torch.full((3, 1), 5))


def compose_all(pairs_of_groups) -> int:
    """Compose every option of every group alone, then every option pair of the given group pairs."""
    from hydra import compose, initialize_config_module

    from circuitfind.cli import GROUPS, group_options
    options = {group: group_options(group) for group in GROUPS}
    assert all(options.values()), options
    n = 0
    with initialize_config_module(config_module="circuitfind.configs", version_base="1.3"):
        for group, names in options.items():
            for option in names:
                cfg = compose("config", overrides=[f"{group}={option}"])
                assert cfg.task.name and cfg.method.name
                n += 1
        for first, second in pairs_of_groups:
            for a in options[first]:
                for b in options[second]:
                    assert compose("config", overrides=[f"{first}={a}", f"{second}={b}"]).task.name
                    n += 1
    return n


def test_every_config_composes_alone_and_beside_the_overlays():
    """What a user can type composes: every option alone, every experiment overlay beside every option of
    every other group (the quick twin of the all-pairs test below)."""
    from circuitfind.cli import GROUPS
    assert compose_all([("experiment", g) for g in GROUPS if g != "experiment"]) > 50


@pytest.mark.slow
def test_every_pair_of_configs_composes():
    from itertools import combinations

    from circuitfind.cli import GROUPS
    assert compose_all(combinations(GROUPS, 2)) > 200


def test_experiment_overlays_apply_after_the_defaults_and_before_overrides():
    cfg = config("experiment=ioi_dry_run", "method.max_edge_tests=50")
    assert (cfg.task.name, cfg.method.name, cfg.model.pretrained) == ("ioi", "acdc", False)
    assert cfg.method.max_edge_tests == 50 and cfg.corruption.name == "corrupted"  # the task's own corruption
    sp = config("experiment=sp_quick", "task=tracr_proportion")
    assert (sp.method.name, sp.method.epochs, sp.method.lr, sp.task.name) == ("sp", 500, 0.01, "tracr_proportion")
    assert "experiment" not in config()  # no overlay: the run's config (and its hash) is unchanged
