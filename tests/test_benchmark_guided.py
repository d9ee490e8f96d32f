"""The guided-ACDC benchmark's KL-level summaries (benchmarks/acdc_guided.py), on hand-made sweeps."""

import argparse
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

SPEC = importlib.util.spec_from_file_location("bench_guided", Path(__file__).parents[1] / "benchmarks" / "acdc_guided.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_the_crossing_is_linear_between_the_sweep_points_around_the_level():
    sweep = [(53, 1.124), (113, 0.604), (163, 0.433)]
    assert bench.crossing(sweep, 1.0) == pytest.approx(53 + 0.124 / 0.520 * 60)
    assert bench.crossing(sweep, 0.5) == pytest.approx(113 + 0.104 / 0.171 * 50)
    assert bench.crossing(sweep, 2.0) == 53  # the smallest circuit is already below: no point above
    assert bench.crossing(sweep, 0.2) is None  # never reached


def test_kl_levels_give_the_fewest_edges_below_each_level_and_the_crossing():
    rows = [dict(method="acdc", kept=e, test_kl=kl, tests=10, wall_s=1.0) for e, kl in [(60, 1.336), (90, 0.698)]]
    levels = bench.kl_levels(rows)["acdc"]
    assert (levels[1.0], levels[0.5], levels["tests"]) == (90, None, 20)
    assert levels["interpolated"][1.0] == pytest.approx(60 + 0.336 / 0.638 * 30)


def test_the_loss_floor_counts_kept_edges_and_the_steps_below_tau_that_climb_the_loss():
    assert bench.loss_floor(38, 0.0676, 0.001) == 38 + 68  # 67 steps below 0.001 reach at most 0.067
    assert bench.loss_floor(5, 0.002, 0.001) == 5 + 3  # exactly 2 tau: two steps below tau fall short
    assert bench.loss_floor(5, 0.0, 0.001) == 5
    assert bench.loss_floor(5, -0.01, 0.001) == 5  # a circuit better than the model: no steps needed


def test_calibration_reads_packed_groups_near_tau_and_a_failed_group_climbs_nothing():
    def row(n, predicted, delta, calibrates="budget"):
        return dict(n_edges=str(n), predicted_rise=str(predicted), delta=str(delta), calibrates=calibrates)

    groups = [row(3, "nan", 0.5), row(4, 0.5, 0.6), row(5, 0.8, 0.72), row(1, 0.5, 0.9), row(9, 0.4, 2.5),
              row(6, 0.5, 0.5, calibrates=""), row(7, 0.6, 0.66)]
    ratios = bench.calibration_ratios(groups, 1.0)  # uncalibrated, single, far above tau, not calibrating: out
    assert ratios == pytest.approx([0.9, 1.1, 1.2])
    failing, per_test = bench.budget_outlook(ratios, 0.85)  # 0.85 x 1.2 >= 1 fails
    assert failing == pytest.approx(1 / 3) and per_test == pytest.approx((0.85 * 0.9 + 0.85 * 1.1) / 3)


def test_calibration_climbs_from_the_full_models_loss_to_the_searchs_last(tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps(dict(parameter=0.5, n_edges_kept=1,
                                                           method_details=dict(final_loss_search=2.0))))
    (tmp_path / "trace.csv").write_text("step,edge,delta,loss,kept,n_edges\n1,2 edges: a .. b,0.4,0.5,0,8\n"
                                        "2,c,0.9,0.5,1,8\n3,2 edges: d .. e,0.45,0.95,0,6\n")
    (tmp_path / "groups.csv").write_text("step,n_edges,attribution,predicted_rise,delta,calibrates\n"
                                         "1,2,1.0,nan,0.4,budget\n2,1,1.0,0.4,0.9,budget\n3,2,1.0,0.4,0.45,budget\n")
    result = bench.cmd_calibration(argparse.Namespace(run=str(tmp_path), budgets=[0.8, 1.0]))
    assert result["climb_tau"] == pytest.approx((2.0 - 0.1) / 0.5)  # from the loss before step 1
    assert result["ratio_mean"] == pytest.approx(0.45 / 0.4)  # one packed group predicted
    assert result["outlook"][0.8]["tests"] == pytest.approx(1 + 3.8 / (0.8 * 1.125))
    assert result["outlook"][1.0]["tests"] == math.inf  # every group fails
    assert "estimate" in capsys.readouterr().out


ORDER_SPEC = importlib.util.spec_from_file_location(
    "order_quality", Path(__file__).parents[1] / "benchmarks" / "guided_order_quality.py")
order_quality = importlib.util.module_from_spec(ORDER_SPEC)
ORDER_SPEC.loader.exec_module(order_quality)


def test_the_order_benchmark_rebuilds_acdcs_circuit_at_a_visit_from_its_trace():
    from circuitfind.core.graph import Architecture, Graph
    from conftest import tiny_model

    graph = Graph(Architecture.from_config(tiny_model(n_layers=2, n_heads=2, d_model=8).cfg), "qkv")
    into_output = [e for e in graph.edges if e.receiver == "resid_post"]
    kept = {into_output[0].name}  # ACDC kept one edge into the output, removed the others there
    mask, edges = order_quality.circuit_before(graph, kept, "m1")
    assert [graph.edges[e].receiver for e in edges] == ["m1"] * len(edges)
    assert all(mask[e.index] == (e.name in kept) for e in into_output)
    assert int(mask.sum()) == graph.n_edges - len(into_output) + 1  # nothing else decided yet
    assert order_quality.spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 30.0, 20.0])) == pytest.approx(0.5)
