"""circuitfind-score: circuits in the eap / MIB format scored on a task through the engine."""

import json
import math
from pathlib import Path

import pytest

from circuitfind.runs.pipeline import run
from circuitfind.score import main, score_paths

from conftest import config

PAIRS = Path(__file__).resolve().parents[1] / "examples" / "ioi_pairs.csv"
TINY = ["task=pairs", f"task.path={PAIRS}", "model.pretrained=false", "model.n_layers=1", "model.n_heads=2",
        "model.d_model=8", "metric=logit_diff"]


def test_a_runs_own_circuit_json_scores_as_the_run_measured_it(tmp_path):
    summary = run(config("task=tracr_reverse", "corruption=zero", "method=eap"), tmp_path / "run")
    result = score_paths([tmp_path / "run" / "circuit.json"], ["task=tracr_reverse", "corruption=zero"])
    own = result["circuits"][0]
    assert own["circuit"] == "in_graph"
    assert own["faithfulness_test"] == pytest.approx(summary["faithfulness"]["test"], abs=1e-6)
    assert own["faithfulness_validation"] == pytest.approx(summary["faithfulness"]["validation"], abs=1e-6)
    tops = [r for r in result["circuits"] if r["circuit"].startswith("top")]
    assert [r["fraction"] for r in tops][-1] == 1.0 and tops[-1]["faithfulness_test"] == pytest.approx(1.0, abs=1e-5)
    assert result["n_edges_eap"] == 106 - 12 and math.isfinite(result["cpr"]) and result["cmd"] >= 0


@pytest.mark.needs_gpt2_tokenizer
def test_the_hand_written_eap_file_and_a_folder_of_circuits(tmp_path, capsys):
    fixture = Path(__file__).parent / "data" / "eap_tiny.json"
    main([str(fixture), *TINY, "--out", str(tmp_path / "scored.json")])
    printed = capsys.readouterr().out
    assert "in_graph: 4 of 13 edges" in printed and "CPR" in printed
    scored = json.loads((tmp_path / "scored.json").read_text())
    assert scored["n_edges_eap"] == 13 and len(scored["circuits"]) == 11  # its own, and MIB's ten fractions
    folder = tmp_path / "circuits"
    folder.mkdir()
    data = json.loads(fixture.read_text())
    for i, name in enumerate(["a.json", "b.json"]):
        for edge, info in data["edges"].items():
            info["in_graph"] = i == 1 or edge == "input->logits"
        (folder / name).write_text(json.dumps(data))
    result = score_paths([folder], TINY)
    assert [r["n_edges"] for r in result["circuits"]] == [1, 13] and result["n_points"] == 2
    assert result["circuits"][1]["faithfulness_test"] == pytest.approx(1.0, abs=1e-5)


def test_a_bad_file_is_one_line_before_any_model_loads(tmp_path, capsys, monkeypatch):
    import circuitfind.runs.pipeline as pipeline

    monkeypatch.setattr(pipeline, "build_problem", lambda *a, **k: pytest.fail("loaded a model"))
    (tmp_path / "bad.json").write_text('{"edges": {"input->logits": {"score": 1.0}}}')
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "bad.json"), "task=tracr_reverse"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == \
        f"circuitfind-score: error: {tmp_path / 'bad.json'}: edge 'input->logits' has no true/false in_graph"
