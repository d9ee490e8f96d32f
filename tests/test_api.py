"""The Python API: the README's example runs as written, and what it returns agrees with the CLI's
run folder and with the model's own forward."""

import csv
import json
import re
from pathlib import Path

import pytest
import torch

import circuitfind
from circuitfind.runs.rundir import EDGES, SUMMARY

from conftest import tiny_model

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_example() -> str:
    text = README.read_text()
    start = text.index("**From Python**")
    return re.search(r"```python\n(.*?)```", text[start:], re.S)[1]


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_python_example(), "README.md", "exec"), {"__name__": "readme"})
    run = tmp_path / "outputs" / "my_run"
    for name in ("edges.csv", "summary.json", "circuit.json", "circuit.dot", "circuit.png", "trace.csv"):
        assert (run / name).is_file(), name
    summary = json.loads((run / SUMMARY).read_text())
    assert summary["method"] == "acdc" and summary["metric"] == "logit_diff"
    printed = capsys.readouterr().out.splitlines()
    assert f"{summary['n_edges_kept']} of {summary['n_edges_total']} edges kept" == printed[0]
    hisp = json.loads((tmp_path / "outputs" / "my_hisp" / SUMMARY).read_text())
    assert hisp["metric"] == "top_logit" and hisp["edge_tpr"] is not None


def _task(metric="logit_diff", **kwargs):
    model = tiny_model(n_layers=2, n_heads=2, d_model=16)
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 40, (5, 6), generator=generator)
    corrupted = torch.randint(0, 40, (5, 6), generator=generator)
    answers = torch.randint(0, 40, (5,), generator=generator)
    task = circuitfind.make_task(model, clean, corrupted, metric, answers=answers, wrong_answers=(answers + 3) % 40,
                                 **kwargs)
    return model, clean, answers, task


def test_metrics_of_the_full_circuit_are_the_models_own():
    model, clean, answers, task = _task(positions=3)
    wrong = (answers + 3) % 40
    logits = model(clean)[:, 3]  # TransformerLens' own forward, read at position 3
    expected = {
        "logit_diff": (logits.gather(1, answers[:, None]) - logits.gather(1, wrong[:, None])).mean(),
        "prob_diff": (logits.softmax(-1).gather(1, answers[:, None]) - logits.softmax(-1).gather(1, wrong[:, None])).mean(),
        "nll": -logits.log_softmax(-1).gather(1, answers[:, None]).mean(),
    }
    circuit = circuitfind.find_circuit(task, "acdc", tau=1e-3)
    full = circuit.graph.full_mask()
    for name, value in expected.items():
        got = circuit.problem.evaluate(full, metric=task.metrics[name])
        assert got == pytest.approx(float(value), rel=1e-6, abs=1e-9), name


def test_a_callable_metric_sees_the_logits_at_the_positions():
    seen = []

    def last_logit_of_token_0(logits, clean_logits):
        seen.append(logits.shape)
        return logits[:, -1, 0] - clean_logits[:, -1, 0]

    _, clean, _, task = _task(metric=last_logit_of_token_0, positions=torch.tensor([[1, 2]] * 5))
    circuit = circuitfind.find_circuit(task, "acdc", tau=1e-3)
    assert seen and all(shape[:2] == (5, 2) for shape in seen)
    assert circuit.problem.evaluate(circuit.graph.full_mask()) == pytest.approx(0.0, abs=1e-12)


def test_save_writes_what_the_frame_and_the_scores_say(tmp_path):
    _, _, _, task = _task()
    circuit = circuitfind.find_circuit(task, "acdc", tau=1e-3, graph="heads")
    summary = circuit.save(tmp_path / "run")
    rows = list(csv.DictReader(open(tmp_path / "run" / EDGES)))
    frame = circuit.edges
    assert [r["edge"] for r in rows] == list(frame["edge"]) == list(circuit.scores)
    assert [r["edge"] for r in rows if r["kept"] == "1"] == circuit.kept_edges
    assert summary["n_edges_kept"] == len(circuit.kept_edges) == int(frame["kept"].sum())
    assert summary["graph"] == "heads" and summary["config_hash"] is None


def test_bad_api_input_is_refused():
    model = tiny_model()
    tokens = torch.zeros(3, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="no metric 'logit_diff' for this task"):
        circuitfind.make_task(model, tokens, tokens, "logit_diff")
    with pytest.raises(ValueError, match="answers has 2 token ids for 3 prompts"):
        circuitfind.make_task(model, tokens, tokens, "nll", answers=[1, 2])
    with pytest.raises(ValueError, match="must have the same shape"):
        circuitfind.make_task(model, tokens, tokens[:, :3])
    with pytest.raises(ValueError, match="outside"):
        circuitfind.make_task(model, tokens, tokens, positions=4)
    task = circuitfind.make_task(model, tokens, tokens)
    with pytest.raises(ValueError, match="unknown method"):
        circuitfind.find_circuit(task, "nope")
