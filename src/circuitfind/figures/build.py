"""Build a figure or table: plan its sweeps, run what is missing, draw through ``plots`` (the same
ROC, metric-against-size and AUC table as ``circuitfind-report``), write the manifest."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import pandas as pd

from ..core.files import atomic_write_text
from ..plots.curves import Panel, metric_figure, roc_figure
from ..plots.style import save
from ..plots.tables import LEVELS, auc_heatmap
from ..runs.points import collect_points
from .manifest import write_manifest
from .plan import FIGURES, PRESETS, FigureError, load_figure_spec, plan
from .sweeps import LAUNCHERS, missing_values, relative, run_sweeps, used_runs
from ..evaluation.faithfulness import faithfulness_table, faithfulness_text
from .tables import auc_long, auc_markdown, auc_wide, table_columns


def draw_roc(points: pd.DataFrame, tasks: list[str], corruptions: list[str], level: str = "edge"):
    """Fig. 3: a panel per task (columns) and ablation (rows).  Returns (figure, AUC of each curve
    drawn, tasks left out for lack of points)."""
    rated = points[points[f"{level}_tpr"].notna()]
    shown = [t for t in tasks if (rated.task == t).any()]
    if not shown:
        raise FigureError(f"no complete run with a ground-truth circuit for {', '.join(tasks) or 'any task'}")
    grid = []
    for corruption in corruptions:
        row = []
        for task in shown:
            panel = rated[(rated.task == task) & (rated.corruption == corruption)]
            facts = dict(task=task, corruption=corruption, level=level)
            for name in ("metric", "graph"):
                if panel[name].nunique() == 1:
                    facts[name] = panel[name].iloc[0]
            row.append(Panel(panel, facts))
        grid.append(row)
    fig, drawn = roc_figure(grid)
    return fig, drawn, [t for t in tasks if t not in shown]


def draw_metric_vs_edges(points: pd.DataFrame, task: str, corruptions: list[str]):
    """Fig. 4: one task, a panel per ablation."""
    points = points[points.task == task]
    if points.empty:
        raise FigureError(f"no complete run of task {task}")
    panels = []
    for corruption in corruptions:
        panel = points[points.corruption == corruption]
        facts = dict(task=task, corruption=corruption)
        for name in ("metric", "graph"):
            if panel[name].nunique() == 1:
                facts[name] = panel[name].iloc[0]
        panels.append(Panel(panel, facts))
    return metric_figure(panels)


def build(name: str, tasks: list[str] | None = None, corruption: str | None = None, preset: str | None = None,
          jobs: int = 2, out: Path = Path("outputs/figures"), runs: Path | None = None, config: str | None = None,
          extra: tuple[str, ...] = (), dry_run: bool = False, argv: list[str] | None = None, echo=print,
          launcher: str = "auto") -> dict:
    """Build figure ``name`` (its figure spec, or the spec file ``config``); returns the outputs and the plan."""
    started = time.time()
    spec = load_figure_spec(config or name)
    if spec.name != name:
        raise FigureError(f"{config} is the figure spec of {spec.name}, not {name}")
    runs = (runs if runs is not None else out / "runs").resolve()  # the sweeps' subprocesses get absolute paths
    plan_ = plan(spec, preset, tasks, corruption, runs, tuple(extra))
    for task, reason in plan_.skipped.items():
        echo(f"note: {name} leaves out {task}: {reason} (name it in TASKS=... to run it anyway)")
    if not plan_.sweeps:
        raise FigureError(f"{name}: no task to run")
    if dry_run:
        for sweep in plan_.sweeps:
            wanted = len(sweep.values or (None,))
            echo(f"  {sweep.task} {sweep.method} {sweep.corruption}/{sweep.metric}: "
                 f"{wanted - len(missing_values(sweep))}/{wanted} complete in {relative(sweep.folder)}")
        return dict(plan=plan_, outputs=[])
    outcomes = run_sweeps(plan_.sweeps, jobs, echo, launcher)
    folders = used_runs(plan_.sweeps)
    if not folders:
        raise FigureError(f"{name}: no sweep produced a complete run (see the sweep.log files under {runs})")
    points = collect_points(folders)
    out.mkdir(parents=True, exist_ok=True)
    extra_manifest: dict = {}
    if spec.figure == "roc":
        fig, drawn, empty = draw_roc(points, plan_.tasks, plan_.corruptions, spec.get("level", "edge"))
        for task in empty:
            echo(f"note: {name} has no complete runs of {task}: no panel")
        stem = f"{name}_{'_'.join(plan_.corruptions)}"
        outputs = save(fig, out / stem)
        extra_manifest["auc"] = drawn
    elif spec.figure == "metric_vs_edges":
        (task,) = plan_.tasks if len(plan_.tasks) == 1 else (None,)
        if task is None:
            raise FigureError(f"{name} draws one task, got {plan_.tasks}")
        stem = name
        outputs = save(draw_metric_vs_edges(points, task, plan_.corruptions), out / stem)
    elif spec.figure == "auc_tables":
        stem = name
        long = auc_long(points, spec, plan_.tasks)
        columns = table_columns(spec, plan_.corruptions)
        outputs = [out / f"{stem}_auc.md", out / f"{stem}_auc_long.csv"]
        title = (f"# AUC of the ROC curves against the ground-truth circuits\n\npreset {plan_.preset}; "
                 f"{len(folders)} runs; pessimistic staircase AUC (`evaluation.rates.roc_auc`); "
                 "bold: the best method per task and column.\n\n")
        atomic_write_text(outputs[0], title + auc_markdown(long, spec, plan_.corruptions))
        long.to_csv(outputs[1], index=False)
        for level in LEVELS:
            path = out / f"{stem}_auc_{level}.csv"
            auc_wide(long, level, columns).to_csv(path, float_format="%.4f")
            outputs.append(path)
        if spec.get("heatmap", False):
            outputs += save(auc_heatmap(long, plan_.tasks, plan_.corruptions,
                                        "AUC against program-derived circuits"), out / f"{stem}_auc")
        echo(auc_markdown(long, spec, plan_.corruptions))
    else:
        raise FigureError(f"{spec.name}: unknown figure kind {spec.figure!r} (roc, metric_vs_edges, auc_tables)")
    # every figure's runs also give MIB's CPR and CMD per curve (evaluation.faithfulness)
    faithful = faithfulness_table(points)
    outputs = list(outputs) + [out / f"{stem}_faithfulness.csv"]
    faithful.to_csv(outputs[-1], index=False)
    if spec.figure == "auc_tables":
        with open(out / f"{stem}_auc.md", "a", encoding="utf-8") as md:
            md.write("\n### Faithfulness: CPR / CMD (test split)\n\n```\n" + faithfulness_text(faithful) + "\n```\n")
    echo(faithfulness_text(faithful))
    manifest = out / f"{stem}.manifest.json"
    write_manifest(manifest, plan_, outcomes, outputs, argv or [], started, **extra_manifest)
    failed = [o for o in outcomes if o.status == "failed"]
    echo(f"{name}: {len(folders)} runs ({sum(o.status == 'reused' for o in outcomes)} sweeps reused, "
         f"{len(failed)} with failed jobs) -> {', '.join(relative(p) for p in outputs)}; "
         f"manifest {relative(manifest)}; {time.time() - started:.0f} s")
    return dict(plan=plan_, outcomes=outcomes, outputs=outputs, manifest=manifest, points=points)


def _names(values: list[str] | None) -> list[str] | None:
    """--tasks a b, --tasks a,b or --tasks "a b" (make passes TASKS as one word or several)."""
    if not values:
        return None
    return [name for value in values for name in re.split(r"[,\s]+", value) if name]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m circuitfind.figures",
                                     description="The ACDC paper's result figures and tables from local run folders.")
    parser.add_argument("figure", choices=FIGURES, help="which figure or table to build")
    parser.add_argument("--tasks", nargs="+",
                        help="tasks to draw (default: the figure's, where their weights are here)")
    parser.add_argument("--corruption", choices=("zero", "corrupted"), help="one ablation instead of the figure's")
    parser.add_argument("--preset", choices=PRESETS, help="sweep sizes (default: the figure's, quick)")
    parser.add_argument("--jobs", type=int, default=2, help="joblib's parallel jobs per sweep (default 2)")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="auto",
                        help="the Hydra launcher of the sweeps (auto, per sweep: joblib for several jobs on more than "
                             "two cores, else the basic launcher in this process)")
    parser.add_argument("--out", type=Path, default=Path("outputs/figures"), help="where figures go")
    parser.add_argument("--runs", type=Path, default=None, help="where sweeps go (default: OUT/runs)")
    parser.add_argument("--config", help="a figure spec file instead of figure_specs/NAME.yaml")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="a circuitfind override for every run (e.g. seed=1); part of the sweeps' identity")
    parser.add_argument("--dry-run", action="store_true", help="list the sweeps and what they hold; run nothing")
    args = parser.parse_args(argv)
    try:
        build(args.figure, _names(args.tasks), args.corruption, args.preset, args.jobs, args.out, args.runs,
              args.config, tuple(args.extra), args.dry_run, ["python", "-m", "circuitfind.figures", *argv],
              launcher=args.launcher)
    except (FigureError, OSError) as error:
        print(f"circuitfind.figures: error: {error}", file=sys.stderr)
        sys.exit(2)
