"""The guided-ACDC benchmark's KL-level summaries (benchmarks/acdc_guided.py), on hand-made sweeps."""

import importlib.util
from pathlib import Path

import pytest

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
