"""Guided ACDC beside plain ACDC, in one process: exact tests, wall time, circuits.

    python benchmarks/acdc_guided.py kl --task induction --corruption corrupted     # KL-vs-edges, Jaccard
    python benchmarks/acdc_guided.py kl --task algo_induction --corruption zero
    python benchmarks/acdc_guided.py tracr --out /tmp/suite                          # the tracr suite, both methods
    python benchmarks/acdc_guided.py gpt2 --tau 0.001                               # GPT-2 shape, whole run
    python benchmarks/acdc_guided.py calibration outputs/runs/...                   # a run's groups.csv

kl     both methods at each tau (default: fig4's quick taus) on one task: kept edges, exact tests
       (candidate circuits whose loss was read; ACDC's ``n_edge_tests``), the floor K + floor(dL / tau)
       + 1 (no search that removes edges only in steps whose exact loss rise is below tau, and keeps
       an edge only after testing it alone, ends at loss rise dL with K kept edges in fewer tests),
       and guided ACDC's floor by block (``tests_floor_blocks``: the same, for a search that settles
       its blocks in its order with its decisions: each block climbs its own share of dL),
       the bound K + K log2(N/K) for the circuit found (a search without a ranking), wall time, KL on the test split, and the Jaccard overlap of the kept
       sets at the same tau; then, per KL level (1, 0.5, 0.2), the fewest edges of any circuit of the
       sweep with test KL at or below it, and the tests summed over the sweep.
tracr  the tracr suite (``figure_specs/tracr_suite.yaml``, quick preset) restricted to ACDC and
       guided ACDC, through ``circuitfind.figures``: edge and node AUC per program and ablation, and
       the exact tests summed over each sweep (from the runs' summaries).
gpt2   ``task=ioi model.pretrained=false`` (a GPT-2-shaped model with random weights, 100 prompts): a
       whole guided run at ``--tau``, then plain ACDC's whole run **estimated**: per-test times of
       single-edge tests sampled evenly over the edge list (restarted at each edge's stage, as ACDC
       runs them) times the number of edges (an upper bound: ACDC drops the inputs of receivers that
       feed nothing untested), and the edges ACDC would test were it to end with guided ACDC's
       circuit (``acdc_tests_here``: every input of each receiver that circuit still reads).
calibration  one guided run's folder: the exact rise of each packed group over the rise its budget
       predicted (``groups.csv``), and an estimate (not a run) of the climb per test and the tests
       those errors allow at other budgets, optimistic: every group packed full, no block's remainder.

Every count comes from exact forwards; the load average is printed beside each timing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message="HookedTransformer is deprecated")

import torch  # noqa: E402

from circuitfind.methods import Problem, get_method  # noqa: E402
from circuitfind.methods.acdc import visits  # noqa: E402
from circuitfind.runs.pipeline import build_problem  # noqa: E402
from circuitfind.runs.validate import compose_config  # noqa: E402

KL_LEVELS = (1.0, 0.5, 0.2)
FIG4_TAUS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0] if Path("/proc/loadavg").exists() else "?"


def fresh(base: Problem) -> Problem:
    """A Problem on the same task and graph with its own engines (no cached forwards shared)."""
    return Problem(base.task, base.graph, base.corruption, base.metric, progress=base.progress,
                   shuffle_positions=base.shuffle_positions, activation_device=base.activation_device)


def run_method(base: Problem, method: str, tau: float, **params) -> dict:
    problem = fresh(base)
    problem.clean_logits("validation")  # the engine's caches, outside the timing (as the pipeline's phases)
    started = time.time()
    result = get_method(method)(problem, tau=tau, **params)
    wall = time.time() - started
    n, k = base.graph.n_edges, result.circuit.n_kept
    with torch.no_grad():
        rise = float(problem.loss(problem.logits(result.circuit), "validation")) - \
            float(problem.loss(problem.clean_logits("validation"), "validation"))
    return dict(method=method, tau=tau, kept=k, tests=len(result.trace), wall_s=round(wall, 2),
                acdc_tests_here=acdc_tests_for(base.graph, result.circuit.kept),
                bound=round(k + k * math.log2(n / k), 1) if k else 0.0, floor=loss_floor(k, rise, tau),
                floor_blocks=result.details.get("tests_floor_blocks"),
                test_kl=problem.evaluate(result.circuit, "test"), load=loadavg(),
                names=set(result.circuit.kept_names()))


def loss_floor(kept: int, rise: float, tau: float) -> int:
    """The fewest exact tests of any search that removes edges only in steps whose exact loss rise
    is below ``tau`` and keeps an edge only after testing it alone: K kept edges, plus the accepted
    steps that climb the circuit's loss ``rise`` above the full model's, each less than tau."""
    return kept + math.floor(rise / tau) + 1 if rise > 0 else kept


def acdc_tests_for(graph, kept: torch.Tensor) -> int:
    """How many edges plain ACDC tests if it ends with the circuit ``kept``: every incoming edge of
    each receiver that still feeds the circuit when ACDC visits it (its outgoing edges are decided
    by then), the output's always; the inputs of the others are dropped untested."""
    if graph.granularity == "nodes":
        return graph.n_edges

    def live(receiver: str) -> bool:
        return receiver == "resid_post" or bool(kept[graph.outgoing[receiver]].any())

    return sum(len(incoming) for receiver, incoming in visits(graph) if live(receiver))


def crossing(points: list[tuple[int, float]], level: float) -> float | None:
    """An **estimate**: the edges at which a method's KL-vs-edges curve reaches ``level``, linear
    between the smallest circuit of the sweep at or below it and the next smaller circuit above it
    (a sweep's few circuits make the fewest-edges count jump by a whole tau step)."""
    below = [(e, kl) for e, kl in points if kl <= level]
    if not below:
        return None
    e_hi, kl_hi = min(below)
    above = [(e, kl) for e, kl in points if e < e_hi and kl > level]
    if not above:
        return float(e_hi)
    e_lo, kl_lo = max(above)
    return e_lo + (kl_lo - level) / (kl_lo - kl_hi) * (e_hi - e_lo)


def kl_levels(rows: list[dict]) -> dict:
    """Per method, the fewest kept edges among its circuits with test KL <= each level, and the
    interpolated crossing of each level (``crossing``, an estimate)."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        out[method] = {level: min((r["kept"] for r in mine if r["test_kl"] <= level), default=None)
                       for level in KL_LEVELS}
        points = [(r["kept"], r["test_kl"]) for r in mine]
        out[method]["interpolated"] = {level: crossing(points, level) for level in KL_LEVELS}
        out[method]["tests"] = sum(r["tests"] for r in mine)
        out[method]["wall_s"] = round(sum(r["wall_s"] for r in mine), 1)
    return out


def cmd_kl(args) -> dict:
    cfg = compose_config(f"task={args.task}", f"corruption={args.corruption}", "progress=false", *args.set)
    base = build_problem(cfg)
    print(f"{args.task} ({base.task.model.cfg.model_name}), {args.corruption} ablation, {base.graph.n_edges} edges, "
          f"load {loadavg()}", flush=True)
    rows = []
    for tau in args.taus:
        plain = run_method(base, "acdc", tau)
        guided = run_method(base, "acdc_guided", tau, order=args.order, rescore=not args.no_rescore, split=args.split,
                            group=args.group, budget=args.budget, carry=not args.no_carry,
                            carry_chance=args.carry_chance)
        for r in (plain, guided):
            r["jaccard"] = len(plain["names"] & r["names"]) / max(1, len(plain["names"] | r["names"]))
            rows.append(r)
            by_block = f"  by block {r['floor_blocks']:5d}" if r["floor_blocks"] is not None else ""
            print(f"tau {tau:<8g} {r['method']:12s} kept {r['kept']:5d}  tests {r['tests']:6d}  floor {r['floor']:5d}{by_block}  "
                  f"bound {r['bound']:8.1f}  "
                  f"test KL {r['test_kl']:.4f}  Jaccard {r['jaccard']:.3f}  {r['wall_s']:7.1f} s  load {r['load']}",
                  flush=True)
        guided["tests_vs_acdc"] = round(guided["tests"] / plain["tests"], 3)
        # K + K log2(N/K) counts a search without a ranking, not a floor (attribution beats it); K is one:
        # guided ACDC keeps an edge only after testing it alone
        guided["bound_vs_acdc"] = round(guided["bound"] / plain["tests"], 3)
        guided["kept_vs_acdc"] = round(guided["kept"] / plain["tests"], 3)
        print(f"tau {tau:<8g} guided / ACDC exact tests {guided['tests_vs_acdc']:.3f}; the bound for guided's circuit "
              f"/ ACDC's tests {guided['bound_vs_acdc']:.3f}; guided's kept edges (each tested alone) / ACDC's tests "
              f"{guided['kept_vs_acdc']:.3f}", flush=True)
    levels = kl_levels(rows)
    for method, row in levels.items():
        print(f"{method:12s} edges for test KL <= " + ", ".join(f"{k}: {v}" for k, v in row.items()
                                                                 if k != "interpolated"), flush=True)
    if {"acdc", "acdc_guided"} <= set(levels):
        plain, guided = levels["acdc"], levels["acdc_guided"]
        edges = ", ".join(f"{level}: {guided[level] / plain[level]:.3f}" if guided[level] is not None and plain[level]
                          else f"{level}: -" for level in KL_LEVELS)
        print(f"guided / ACDC: exact tests over the sweep {guided['tests'] / plain['tests']:.3f}, wall "
              f"{guided['wall_s'] / plain['wall_s']:.3f}, edges per KL level {edges}", flush=True)
        a, b = plain["interpolated"], guided["interpolated"]
        estimate = ", ".join(f"{level}: {b[level]:.0f} / {a[level]:.0f} = {b[level] / a[level]:.3f}"
                             if a[level] and b[level] else f"{level}: -" for level in KL_LEVELS)
        print(f"estimate, interpolated between sweep points: guided / ACDC edges per KL level {estimate}", flush=True)
    for r in rows:
        del r["names"]
    return dict(task=args.task, corruption=args.corruption, n_edges=base.graph.n_edges, rows=rows, levels=levels)


def cmd_tracr(args) -> dict:
    from omegaconf import OmegaConf

    from circuitfind.figures.build import build
    from circuitfind.figures.plan import load_figure_spec

    exp = load_figure_spec("tracr_suite")
    exp.methods = ["acdc", "acdc_guided"]
    exp.heatmap = False
    exp.presets[exp.preset].acdc_guided.overrides = [*args.set, f"method.split={args.split}", f"method.group={args.group}",
                                                     f"method.order={args.order}", f"method.rescore={not args.no_rescore}",
                                                     f"method.budget={args.budget}", f"method.carry={not args.no_carry}",
                                                     f"method.carry_chance={args.carry_chance}"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = out / "tracr_suite_acdc.yaml"
    config.write_text(OmegaConf.to_yaml(exp))
    started = time.time()
    print(f"tracr suite, ACDC and guided ACDC, load {loadavg()}", flush=True)
    result = build("tracr_suite", None, None, config=str(config), out=out, echo=print)
    manifest = json.loads(Path(result["manifest"]).read_text())
    totals: dict = {}
    for run in manifest["runs"]:
        summary = json.loads((Path(run["path"]) / "summary.json").read_text())
        key = f"{summary['method']}/{summary['corruption']}"
        total = totals.setdefault(key, dict(tests=0, wall_s=0.0, runs=0))
        total["tests"] += summary["n_edge_tests"] or 0
        total["wall_s"] += summary["wall_s"]
        total["runs"] += 1
    for key, total in sorted(totals.items()):
        print(f"{key:28s} runs {total['runs']:4d}  exact tests {total['tests']:7d}  wall {total['wall_s']:.0f} s", flush=True)
    print(f"whole suite {time.time() - started:.0f} s, load {loadavg()}; tables in {out}", flush=True)
    return dict(totals=totals, auc=manifest.get("auc"), out=str(out))


def sampled_test_seconds(problem: Problem, n_samples: int) -> float:
    """Mean seconds of one plain ACDC edge test (the edge removed from the full circuit, the forward
    restarted at its stage, the loss read), over edges spread evenly through the visiting order."""
    engine, data, graph = problem.engine("validation"), problem.data("validation"), problem.graph
    with torch.no_grad():
        _, cache = engine.run(graph.full_mask(), data.positions, record=True)
        picks = torch.linspace(0, graph.n_edges - 1, n_samples).round().long().tolist()
        seconds = []
        for e in picks:
            mask = torch.ones(graph.n_edges, dtype=engine.dtype)
            mask[e] = 0
            started = time.time()
            logits, _ = engine.run(mask[None], data.positions, start_stage=graph.edges[e].stage, cache=cache)
            float(problem.loss(logits[0], "validation"))
            seconds.append(time.time() - started)
    return sum(seconds) / len(seconds)


def cmd_gpt2(args) -> dict:
    cfg = compose_config("task=ioi", "model.pretrained=false", f"task.n_prompts={args.prompts}", "progress=false",
                         *args.set)
    base = build_problem(cfg)
    graph = base.graph
    print(f"GPT-2 shape (random weights), {args.prompts} prompts, {graph.n_edges} edges, load {loadavg()}", flush=True)
    out = {}
    for tau in args.taus:
        params = dict(order=args.order, rescore=not args.no_rescore, split=args.split, group=args.group,
                      budget=args.budget, carry=not args.no_carry, carry_chance=args.carry_chance)
        if args.max_edge_tests is not None:
            params["max_edge_tests"] = args.max_edge_tests
        guided = run_method(base, "acdc_guided", tau, **params)
        del guided["names"]
        print(f"tau {tau:g} guided: kept {guided['kept']}, exact tests {guided['tests']}, floor {guided['floor']} "
              f"(by block {guided['floor_blocks']}), "
              f"bound {guided['bound']}, "
              f"{guided['wall_s']:.0f} s, load {guided['load']}; plain ACDC would test {guided['acdc_tests_here']} "
              "edges to end with this circuit (estimate)", flush=True)
        out[str(tau)] = guided
    per_test = sampled_test_seconds(fresh(base), args.samples)
    estimate = dict(per_test_s=round(per_test, 3), tests=graph.n_edges, hours=round(per_test * graph.n_edges / 3600, 2),
                    load=loadavg(), note="estimate: sampled per-test time x every edge (ACDC tests at most every edge)")
    print(f"plain ACDC (estimate): {per_test:.3f} s per test x {graph.n_edges} edges = {estimate['hours']} h, "
          f"load {estimate['load']}", flush=True)
    return dict(guided=out, acdc_estimate=estimate)


def calibration_ratios(groups: list[dict], tau: float) -> list[float]:
    """Exact rise over the budget's predicted rise (``groups.csv``), sorted, for the tests of several
    edges that calibrated the budget, with a rise below 2 tau: where the budget packs its groups (far
    above tau, the rise of a few strong edges grows less than their attribution)."""
    return sorted(float(row["delta"]) / float(row["predicted_rise"]) for row in groups
                  if row["calibrates"] == "budget" and int(row["n_edges"]) > 1 and float(row["predicted_rise"]) > 0
                  and float(row["delta"]) < 2 * tau)


def budget_outlook(ratios: list[float], budget: float) -> tuple[float, float]:
    """An estimate from the ratios of one run: with every group packed to ``budget`` x tau and these
    errors (optimistic: no block ends in a smaller group), the share of groups that fail (ratio x
    budget >= 1) and the loss climbed per test, in tau (a failed test climbs nothing)."""
    rises = [budget * r for r in ratios]
    passed = [r for r in rises if r < 1]
    return 1 - len(passed) / len(rises), sum(passed) / len(rises)


def cmd_calibration(args) -> dict:
    import csv

    folder = Path(args.run)
    summary = json.loads((folder / "summary.json").read_text())
    tau, kept = summary["parameter"], summary["n_edges_kept"]  # each kept edge's own loss is read once
    groups = list(csv.DictReader(open(folder / "groups.csv")))
    trace = list(csv.DictReader(open(folder / "trace.csv")))
    # the loss climbed from the full model's to the circuit's (some steps are read from memory, not
    # in the trace): the first row's loss is the circuit's after its test
    first = float(trace[0]["loss"]) - (float(trace[0]["delta"]) if trace[0]["kept"] == "0" else 0.0)
    climb = (summary["method_details"]["final_loss_search"] - first) / tau
    ratios = calibration_ratios(groups, tau)
    mean, sd = statistics.fmean(ratios), statistics.pstdev(ratios)
    print(f"{folder}: {len(trace)} tests, {kept} kept edges, loss climb {climb:.1f} tau; {len(ratios)} groups of "
          f"several edges below 2 tau: rise / predicted mean {mean:.3f}, sd {sd / mean:.3f} of the mean, "
          f"range {ratios[0]:.2f}-{ratios[-1]:.2f}")
    print("estimate from these ratios (not a run): budget, groups failing, climb per test (tau), tests")
    outlook = {}
    for budget in args.budgets:
        failing, per_test = budget_outlook(ratios, budget)
        tests = kept + climb / per_test if per_test > 0 else math.inf
        outlook[budget] = dict(failing=failing, climb_per_test=per_test, tests=tests)
        print(f"  {budget:.2f}  {failing:6.1%}  {per_test:.3f}  {tests:.0f}")
    return dict(n_tests=len(trace), kept=kept, climb_tau=climb, ratio_mean=mean, ratio_sd=sd / mean, outlook=outlook)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    kl = sub.add_parser("kl", help="both methods over a tau sweep on one task")
    kl.add_argument("--task", default="induction")
    kl.add_argument("--corruption", default="corrupted")
    kl.add_argument("--taus", type=float, nargs="+", default=list(FIG4_TAUS))
    tracr = sub.add_parser("tracr", help="the tracr suite for both methods")
    tracr.add_argument("--out", default="outputs/benchmarks/acdc_guided_tracr")
    gpt2 = sub.add_parser("gpt2", help="GPT-2 shape: a whole guided run, plain ACDC estimated")
    gpt2.add_argument("--taus", type=float, nargs="+", default=[0.001])
    gpt2.add_argument("--prompts", type=int, default=100)
    gpt2.add_argument("--samples", type=int, default=24, help="plain ACDC tests timed for the estimate")
    gpt2.add_argument("--max-edge-tests", type=int, default=None, help="cap (default: a whole run)")
    calibration = sub.add_parser("calibration", help="a guided run's predicted against exact rises (groups.csv)")
    calibration.add_argument("run", help="the run folder")
    calibration.add_argument("--budgets", type=float, nargs="+", default=[0.65, 0.75, 0.85, 0.95])
    for p in (kl, tracr, gpt2):
        p.add_argument("--order", default="eap_ig", help="acdc_guided's order")
        p.add_argument("--no-rescore", action="store_true", help="acdc_guided's order from the full model only")
        p.add_argument("--split", default="mass", help="acdc_guided's split: mass or half")
        p.add_argument("--budget", type=float, default=0.75, help="acdc_guided's loss budget (share of tau; 0: off)")
        p.add_argument("--group", default="receiver", help="acdc_guided's blocks: stage or receiver")
        p.add_argument("--no-carry", action="store_true", help="acdc_guided's blocks each end with a test of their own")
        p.add_argument("--carry-chance", type=float, default=0.1,
                       help="acdc_guided's carry gate: kept edges by their chances a carried remainder may hold")
        p.add_argument("--set", action="append", default=[], help="a circuitfind override (repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    result = dict(kl=cmd_kl, tracr=cmd_tracr, gpt2=cmd_gpt2, calibration=cmd_calibration)[args.command](args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
