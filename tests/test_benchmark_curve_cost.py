"""The curve-cost benchmark (benchmarks/curve_cost.py): one real run, its overrides reach the run, and
its ratios are the summary's own seconds."""

import importlib.util
import json
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("bench_curve_cost",
                                              Path(__file__).parents[1] / "benchmarks" / "curve_cost.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_a_case_runs_through_the_command_line_with_its_overrides_and_divides_the_summarys_seconds(tmp_path):
    row = bench.cost_row("induction", tmp_path / "run", overrides=("corruption=zero",))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["corruption"] == "zero" and row["device"] == summary["device"] == "cpu"
    d = summary["method_details"]
    assert row["test_forwards"] == d["curve_test_forwards"] >= 1
    curve = d["curve_s"] + d["curve_test_s"]
    assert row["curve_per_scores"] == pytest.approx(curve / d["scores_s"])
    assert row["curve_per_caches_scores"] == pytest.approx(curve / (summary["timings"]["caches"] + d["scores_s"]))
