"""The ACDC paper's result figures and tables from local run folders.

    python -m circuitfind.figures fig3 [--tasks T ...] [--corruption zero|corrupted]   # make fig3
    python -m circuitfind.figures fig4                                                 # make fig4
    python -m circuitfind.figures tables [--tasks T ...]                               # make tables

What each figure shows (tasks, methods, corruptions, metrics) and the sweep each method runs live in
its figure spec, ``src/circuitfind/figure_specs/<name>.yaml``, in two presets: ``quick`` (the default,
sized for a laptop CPU) and ``paper`` (the paper's sweeps).  A figure is built in three steps:

1. plan one *sweep* per (task, method, corruption, metric) with a folder under ``--runs``
   (default ``outputs/figures/runs``) named by its settings, so figures with the same settings share
   it: fig. 3 on zero ablation and the tables reuse each other's runs;
2. run, through the ``circuitfind -m`` command line and a Hydra launcher (``--launcher``: joblib with
   ``--jobs`` parallel jobs, ``slurm`` for a cluster, ``basic`` for one job at a time in a child
   process, ``in_process`` for Hydra's basic launcher inside this process; ``auto``, the default,
   picks joblib for a sweep of several jobs on a machine with more than two cores (on two, for
   several SP-like costly jobs) and ``in_process``
   otherwise, since importing torch and TransformerLens costs a child process 5-10 CPU-seconds, more
   than a tracr run), the parameter values that folder does not yet hold as a complete run
   (``summary.json``): a second invocation reuses everything, and a failed job costs only its own point;
3. read the run folders, draw the figure (PNG and PDF) or write the tables (CSV and Markdown) into
   ``--out`` (default ``outputs/figures``), with a manifest: the runs and configs behind them.

Tasks whose model weights are neither cached nor downloadable (IOI, Greater-Than and Docstring
offline) are left out with a printed note, unless ``--tasks`` names them, in which case their runs
are attempted and their one-line errors shown.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.cm  # noqa: E402
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import DictConfig, ListConfig, OmegaConf  # noqa: E402

from . import __version__  # noqa: E402
from .evaluation.rates import pareto_front, roc_auc, roc_points, roc_staircase  # noqa: E402
from .methods.spec import Sweep as MethodSweep, get_spec, method_labels, method_rank, spec_of_label  # noqa: E402
from .report import auc_table, collect_points  # noqa: E402
from .core.files import atomic_write_text  # noqa: E402
from .runs.rundir import SUMMARY  # noqa: E402

EXPERIMENTS = ("fig3", "fig4", "tables", "tracr_suite")
PRESETS = ("quick", "paper")
TASK_LABELS = {"ioi": "IOI", "tracr_reverse": "tracr-reverse", "tracr_proportion": "tracr-proportion",
               "docstring": "Docstring", "greaterthan": "Greater-Than", "induction": "Induction"}
METRIC_KIND_LABELS = {"kl": "KL", "task": "task metric"}
METRIC_LABELS = {"kl": "KL divergence", "l2": "L2 distance", "logit_diff": "logit difference",
                 "prob_diff": "probability difference", "nll": "NLL", "frac_correct": "fraction correct"}


class FigureError(ValueError):
    """A problem with the experiment config or the runs that stops the figure (one line)."""


def _label(table: dict, key: str) -> str:
    return table.get(key, key)


def _swept(method: str) -> MethodSweep | None:
    """What a sweep of ``method`` varies (its spec's); None for a method whose one run gives its curve."""
    return get_spec(method).sweep


def _method_attribute(method: str, name: str, default):
    """A spec attribute (cmap, parameter_label) of a run's method label (a method or a variant)."""
    spec = spec_of_label(method)
    return default if spec is None or getattr(spec, name) is None else getattr(spec, name)


# ---- experiment configs ---------------------------------------------------------------------------
def experiment_path(name: str) -> Path:
    """The packaged figure spec ``name`` (``figure_specs/<name>.yaml``).  Not a Hydra config group:
    a figure is a set of sweeps, not one run's settings (those are ``experiment=`` overlays)."""
    return Path(str(files("circuitfind.figure_specs") / f"{name}.yaml"))


def load_experiment(source: str | Path) -> DictConfig:
    """An experiment config by name (fig3, fig4, tables) or path."""
    path = Path(source) if str(source).endswith(".yaml") else experiment_path(str(source))
    if not path.is_file():
        raise FigureError(f"no experiment config {path}")
    exp = OmegaConf.load(path)
    for key in ("name", "figure", "tasks", "methods", "corruptions", "metrics", "presets"):
        if key not in exp:
            raise FigureError(f"{path}: missing key {key!r}")
    return exp


def task_metrics(exp: DictConfig, task: str) -> dict[str, str]:
    """The metric of each column of ``task`` (a figure has one, ``metric``; the tables have ``kl``
    and ``task``), leaving out columns the task has no metric for."""
    if task not in exp.metrics:
        raise FigureError(f"experiment {exp.name} names no metric for task {task} (add it under `metrics`)")
    metrics = exp.metrics[task]
    if isinstance(metrics, str):
        return {"metric": metrics}
    return {kind: name for kind, name in metrics.items() if name is not None}


# ---- the circuitfind config, composed without running it --------------------------------------------
@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple[str, ...]) -> DictConfig:
    from .runs.pipeline import compose_config  # imports torch: only when a figure needs a config

    return compose_config(*overrides, return_hydra_config=True)


def paper_values(task: str, method: str) -> list[float]:
    """The values ``threshold=paper`` sweeps for this task and method (configs/threshold/)."""
    sweep = _swept(method)
    parameter = sweep.key
    cfg = _composed((f"task={task}", f"method={method}", "threshold=paper"))
    if sweep.needs_task_values and OmegaConf.select(cfg, f"task.sweeps.{method}") is None:
        raise FigureError(f"task {task} has no paper {parameter} sweep (task.sweeps.{method}); "
                          "give `values` in the experiment config")
    return [float(v) for v in str(cfg.hydra.sweeper.params[parameter]).split(",")]


def model_unavailable(task: str, overrides: tuple[str, ...] = ()) -> str | None:
    """Why the model of ``task`` cannot be loaded here (its weights neither cached nor downloadable),
    or None.  Answers None where it cannot tell: the run itself then says what is missing."""
    model = OmegaConf.to_container(_composed((f"task={task}", *overrides)).model, resolve=True)
    if model.get("kind") != "hub" or not model.get("pretrained", True):
        return None  # shipped, compiled or random weights: always at hand
    try:
        from .models import loading

        if loading.cached_weights(model["repo"]) is not None or loading.hub_reachable():
            return None
        return (f"the weights of {model['repo']} are not in the Hugging Face cache ({loading.hub_cache_dir()}) "
                "and the hub cannot be reached")
    except Exception:  # noqa: BLE001 - the probe must never stop a figure: let the run decide
        return None


# ---- sweeps: planning, reuse, running --------------------------------------------------------------
def _number(value: float) -> str:
    """A parameter value as Hydra reads it back unchanged (repr of a float: 1e-05, 0.001, 2.0)."""
    return repr(float(value))


@dataclass(frozen=True)
class Sweep:
    """The runs of one method on one task, corruption and metric, over the method's parameter."""

    task: str
    method: str
    corruption: str
    metric: str
    values: tuple[float, ...]  # the swept parameter's values; () for a method run once (HISP)
    overrides: tuple[str, ...]  # further settings of every job (method.epochs=500, ...)
    root: Path

    @property
    def parameter(self) -> str | None:
        return _swept(self.method).key if self.values else None

    def settings(self) -> list[str]:
        """The overrides every job of the sweep shares: what makes its runs the same config."""
        return [f"task={self.task}", f"method={self.method}", f"corruption={self.corruption}",
                f"metric={self.metric}", *self.overrides]

    @property
    def folder(self) -> Path:
        """Named by the shared settings, not the values: a sweep that gains values keeps its runs, and
        every figure with the same settings finds the same folder."""
        digest = hashlib.sha256(json.dumps([self.settings(), self.parameter]).encode()).hexdigest()[:10]
        return self.root / self.task / self.method / f"{self.corruption}-{self.metric}-{digest}"


# Reuse is decided here and only here: a job is done when the sweep folder holds a complete run
# (summary.json) for its value.  When run folders become keyed by config hash, this is what changes.
def complete_runs(sweep: Sweep) -> dict[float | None, Path]:
    """The sweep's complete run folders by parameter value (HISP, not swept: under None)."""
    found: dict[float | None, Path] = {}
    if not sweep.folder.is_dir():
        return found
    for folder in sorted(p for p in sweep.folder.iterdir() if (p / SUMMARY).is_file()):
        summary = json.loads((folder / SUMMARY).read_text())
        value = None if sweep.parameter is None else summary.get("parameter")
        for wanted in sweep.values or (None,):
            if wanted is None or (value is not None and math.isclose(float(value), wanted, rel_tol=1e-9)):
                found.setdefault(wanted, folder)
    return found


def missing_values(sweep: Sweep) -> list[float | None]:
    done = complete_runs(sweep)
    return [v for v in (sweep.values or (None,)) if v not in done]


def sweep_command(sweep: Sweep, values: list[float | None], launcher: str = "basic", jobs: int = 1) -> list[str]:
    """The circuitfind multirun that computes ``values``, one job folder per value, through the Hydra
    ``launcher`` (its settings are not part of the sweep's identity)."""
    # draw=false: a figure reads summaries, not hundreds of circuit.png (circuit.dot is still written)
    command = [sys.executable, "-m", "circuitfind.cli", "-m", *sweep.settings(), "progress=false", "draw=false",
               f"hydra.sweep.dir={sweep.folder}"]
    if sweep.parameter is None:
        command += ["hydra.sweep.subdir=run"]
    else:
        parameter, short = _swept(sweep.method).key, _swept(sweep.method).short
        command += [f"{parameter}={','.join(_number(v) for v in values)}",
                    f"hydra.sweep.subdir={short}_${{{parameter}}}"]  # a folder per value: reruns fill gaps
    return command + launcher_overrides(launcher, jobs)


LAUNCHERS = ("auto", "joblib", "basic", "in_process", "submitit_local", "slurm")


# A sweep of SP-like jobs (spec cost 10: thousands of training steps each) outweighs the imports of
# joblib's worker processes even on two cores.
COSTLY_JOB = 10


def resolve_launcher(launcher: str, n_jobs: int = 2, cores: int | None = None, cost: int = 1) -> str:
    """``auto``: Hydra's joblib launcher for a sweep of several jobs where the ``launchers`` extra is
    installed and there are more than two cores, or on two cores for a sweep of several costly jobs;
    otherwise Hydra's basic launcher in this process (parallel cheap jobs on two cores save less than
    the torch imports of the worker processes cost)."""
    if launcher != "auto":
        return launcher
    import importlib.util
    cores = (os.cpu_count() or 1) if cores is None else cores
    parallel = n_jobs > 1 and (cores > 2 or (cores == 2 and cost >= COSTLY_JOB and n_jobs >= 4))
    if parallel and importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher"):
        return "joblib"
    return "in_process"


def launcher_overrides(launcher: str, jobs: int) -> list[str]:
    """The Hydra overrides that pick ``launcher`` (``jobs`` parallel jobs for joblib)."""
    if launcher in ("basic", "in_process"):
        return []
    if launcher == "joblib":
        return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={max(1, jobs)}"]
    return [f"hydra/launcher={launcher}"]


def _cli_arguments(sweep: Sweep) -> list[str]:
    """The sweep as a ``circuitfind`` command's arguments, every value included (for the manifest)."""
    return sweep_command(sweep, list(sweep.values) or [None])[3:]


@dataclass
class SweepOutcome:
    sweep: Sweep
    status: str  # reused | ran | failed (some values still missing after the run)
    ran: list = field(default_factory=list)
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    # One thread per job: the paper's small models run fastest single-threaded, and --jobs sweeps
    # share the cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    return env


def _run_in_process(arguments: list[str], log) -> int:
    """``circuitfind <arguments>`` inside this process (Hydra's basic launcher runs the jobs here),
    its output into ``log``; the exit code it would have had."""
    from hydra.core.global_hydra import GlobalHydra

    from . import cli

    saved_argv = sys.argv
    sys.argv = ["circuitfind", *arguments]
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            cli.main()
        return 0
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv = saved_argv
        GlobalHydra.instance().clear()  # the next sweep composes its own config
        _detach_job_log_handlers(log)


def _detach_job_log_handlers(log) -> None:
    """Hydra pointed the jobs' log handlers at ``log``, which is about to close: drop them."""
    import logging

    for logger in [logging.getLogger(), *(logging.getLogger(name) for name in logging.root.manager.loggerDict)]:
        for handler in list(getattr(logger, "handlers", [])):
            if getattr(handler, "stream", None) is log:
                logger.removeHandler(handler)


def _run_one(sweep: Sweep, values: list, launcher: str, jobs: int) -> SweepOutcome:
    sweep.folder.mkdir(parents=True, exist_ok=True)
    command = sweep_command(sweep, values, launcher, jobs)
    log_path = sweep.folder / "sweep.log"  # every invocation's output, appended
    started = time.time()
    with open(log_path, "a") as log:
        log.write(f"\n# {datetime.datetime.now().isoformat(timespec='seconds')}: {' '.join(command)}\n")
        log.flush()
        offset = log.tell()
        if launcher == "in_process":
            with _one_thread_unless_set():
                returncode = _run_in_process(command[3:], log)
        else:
            returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=_subprocess_env(),
                                        check=False).returncode
    wall = time.time() - started
    with open(log_path) as log:
        log.seek(offset)
        lines = [line for line in log.read().splitlines() if line.strip()]
    # A failing job prints one "circuitfind: error:" line; anything else that stops the whole command
    # (a Hydra override it cannot parse, a crash) shows in its last lines.
    errors = list(dict.fromkeys(line for line in lines if line.startswith("circuitfind: error:")))
    if returncode != 0 and not errors:
        errors = lines[-3:]
    status = "failed" if missing_values(sweep) else "ran"
    return SweepOutcome(sweep, status, ran=values, wall_s=round(wall, 1), errors=errors)


@contextlib.contextmanager
def _one_thread_unless_set():
    """What ``_subprocess_env`` gives a child process, for jobs run here: torch's threads at one
    unless OMP_NUM_THREADS says otherwise (a run's ``threads: auto`` may still raise it for a big model)."""
    import torch

    saved = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def run_sweeps(sweeps: list[Sweep], jobs: int = 2, echo=print, launcher: str = "auto") -> list[SweepOutcome]:
    """Run what each sweep lacks, one sweep after another (the costliest first), each sweep's jobs
    through the Hydra ``launcher`` (joblib: ``jobs`` at a time; ``auto``: chosen per sweep)."""
    outcomes = {sweep: SweepOutcome(sweep, "reused") for sweep in sweeps if not missing_values(sweep)}
    todo = [(sweep, missing_values(sweep)) for sweep in sweeps if sweep not in outcomes]
    todo.sort(key=lambda item: -get_spec(item[0].method).cost * len(item[1]))
    chosen = {sweep: resolve_launcher(launcher, len(values), cost=get_spec(sweep.method).cost) for sweep, values in todo}
    names = sorted(set(chosen.values())) or [resolve_launcher(launcher)]
    how = {"joblib": f"joblib, {jobs} at a time", "basic": "basic, one at a time",
           "in_process": "basic, in this process"}
    echo(f"{len(sweeps)} sweeps: {len(outcomes)} complete (reused), {len(todo)} to run "
         f"({sum(len(v) for _, v in todo)} jobs through hydra/launcher="
         f"{', '.join(how.get(name, name + ' queued') for name in names)})")
    for sweep, values in todo:
        outcome = _run_one(sweep, values, chosen[sweep], jobs)
        outcomes[sweep] = outcome
        line = (f"  {sweep.task} {sweep.method} {sweep.corruption}/{sweep.metric}: {len(outcome.ran)} job(s), "
                f"{outcome.wall_s:.0f} s")
        if outcome.status == "failed":
            line += f", {len(missing_values(sweep))} without a complete run (see {_relative(sweep.folder / 'sweep.log')})"
            line += "".join(f"\n      {e}" for e in outcome.errors[:2])
        echo(line)
    return [outcomes[sweep] for sweep in sweeps]


# ---- what a figure needs ---------------------------------------------------------------------------
@dataclass
class Plan:
    exp: DictConfig
    preset: str
    tasks: list[str]
    corruptions: list[str]
    sweeps: list[Sweep]
    skipped: dict[str, str]  # task -> why it is left out


def _method_sweep(exp: DictConfig, preset: str, task: str, method: str) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """(values, overrides) of one method's sweep on ``task`` under ``preset``."""
    spec = OmegaConf.select(exp, f"presets.{preset}.{method}", default=None)
    if spec is None:
        raise FigureError(f"experiment {exp.name} preset {preset} has no settings for method {method}")
    task_spec = OmegaConf.select(exp, f"presets.{preset}.per_task.{task}.{method}", default=None)
    if task_spec is not None:  # a task may need its own values (no paper list, another scale)
        spec = OmegaConf.merge(spec, task_spec)
    overrides = tuple(str(o) for o in spec.get("overrides", []))
    if _swept(method) is None:
        return (), overrides
    values = spec.get("values")
    if values == "paper":
        return tuple(paper_values(task, method)), overrides
    if not isinstance(values, (list, ListConfig)) or not values:
        raise FigureError(f"experiment {exp.name} preset {preset}: {method} needs `values` (a list, or paper)")
    return tuple(float(v) for v in values), overrides


def plan(exp: DictConfig, preset: str | None = None, tasks: list[str] | None = None,
         corruption: str | None = None, runs: Path = Path("outputs/figures/runs"),
         extra: tuple[str, ...] = ()) -> Plan:
    """The sweeps a figure needs.  Tasks named in ``tasks`` always run; by default the experiment's
    tasks whose model is unavailable are skipped, with the reason."""
    preset = preset or exp.get("preset", "quick")
    if preset not in exp.presets:
        raise FigureError(f"experiment {exp.name} has no preset {preset!r}; choose one of {', '.join(exp.presets)}")
    chosen = list(tasks) if tasks else list(exp.tasks)
    corruptions = [corruption] if corruption else list(exp.corruptions)
    skipped: dict[str, str] = {}
    sweeps = []
    for task in chosen:
        metrics = task_metrics(exp, task)
        if not tasks:
            reason = model_unavailable(task, extra)
            if reason:
                skipped[task] = reason
                continue
        try:
            methods = {m: _method_sweep(exp, preset, task, m) for m in exp.methods}
        except FigureError as error:
            if tasks:
                raise
            skipped[task] = str(error)
            continue
        # Settings of every run of this task (tracr_suite: the paper tasks' program-derived truth).
        task_extra = tuple(str(o) for o in OmegaConf.select(exp, f"task_overrides.{task}", default=None) or ())
        for method, (values, overrides) in methods.items():
            for metric in dict.fromkeys(metrics.values()):
                for corr in corruptions:
                    sweeps.append(Sweep(task, method, corr, metric, values, overrides + task_extra + tuple(extra),
                                        Path(runs)))
    return Plan(exp, preset, [t for t in chosen if t not in skipped], corruptions, sweeps, skipped)


def used_runs(sweeps: list[Sweep]) -> list[Path]:
    """The complete run folders of the planned values only (a sweep folder may hold more)."""
    return [folder for sweep in sweeps for folder in complete_runs(sweep).values()]


# ---- shading by parameter ---------------------------------------------------------------------------
def _shade_map(method: str) -> mcolors.Colormap:
    """The method's colour map without its palest third (pale points vanish on white)."""
    base = plt.get_cmap(_method_attribute(method, "cmap", "Greys"))
    return mcolors.ListedColormap(base(np.linspace(0.35, 1.0, 256)), name=f"{method}_shade")


def _parameter_norm(method: str, values) -> mcolors.Normalize:
    """tau and lambda span decades: log scale; HISP's k counts components: linear."""
    values = [float(v) for v in values if v is not None and not pd.isna(v)]
    if not values:
        return mcolors.Normalize(0, 1)
    low, high = min(values), max(values)
    if _method_attribute(method, "sweep", None) is not None and low > 0:
        return mcolors.LogNorm(low, high if high > low else low * 10)
    return mcolors.Normalize(low, high if high > low else low + 1)


def _method_color(method: str) -> tuple:
    return _shade_map(method)(0.75)


def _shades(points: pd.DataFrame) -> dict[str, mcolors.Normalize]:
    return {m: _parameter_norm(m, g["parameter"]) for m, g in points.groupby("method")}


def _parameters(points: pd.DataFrame) -> dict[str, list[float]]:
    return {m: [float(v) for v in g["parameter"].dropna()] for m, g in points.groupby("method")}


def _parameter_ticks(norm: mcolors.Normalize) -> matplotlib.ticker.Formatter:
    """Plain numbers (0.01, 250), but powers of ten on a bar reaching below 10^-3 (ACDC's taus),
    where plain decimals would be long."""
    powers = isinstance(norm, mcolors.LogNorm) and norm.vmin < 1e-3

    def tick(value: float, _position=None) -> str:
        exponent = math.log10(value) if value > 0 else 0.5
        if powers and exponent == round(exponent):
            return f"$10^{{{int(exponent)}}}$"
        return f"{value:g}"

    return matplotlib.ticker.FuncFormatter(tick)


def _add_parameter_colorbars(fig, axes, norms: dict[str, mcolors.Normalize], values: dict[str, list]) -> None:
    # Constrained layout puts each new colour bar nearest the panels: add them last method first, so
    # they read ACDC, SP, HISP from left to right like the legends.
    for method in reversed(_ordered_methods(norms)):
        mappable = matplotlib.cm.ScalarMappable(norm=norms[method], cmap=_shade_map(method))
        bar = fig.colorbar(mappable, ax=axes, location="right", shrink=0.85, aspect=28, pad=0.01, fraction=0.03)
        bar.set_label(_method_attribute(method, "parameter_label", method), fontsize=9)
        swept = sorted(set(values[method]))
        if isinstance(norms[method], mcolors.LogNorm) and len(swept) <= 8:
            bar.set_ticks(swept)  # a few values: label each (a log bar over less than a decade has no ticks)
        elif not isinstance(norms[method], mcolors.LogNorm):
            bar.ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # k counts components
        bar.ax.yaxis.set_major_formatter(_parameter_ticks(norms[method]))
        bar.ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        bar.ax.tick_params(labelsize=8)


def _titles(fig, title: str, note: str) -> None:
    """A title and, in smaller grey type below it, how to read the figure.  The title reserves two
    lines in the constrained layout; the note goes into the second once the layout is done."""
    width_pt = fig.get_figwidth() * 72  # both wrapped to the figure's width: one narrow panel must not cut them
    note = "\n".join(textwrap.wrap(note, max(int(width_pt / (0.6 * 8.5)), 20)))
    title = "\n".join(textwrap.wrap(title, max(int(width_pt / (0.6 * 11.5)), 20)))
    heading = fig.suptitle(title + "\n" * (note.count("\n") + 1), fontsize=11.5)
    fig.canvas.draw()
    box = heading.get_window_extent().transformed(fig.transFigure.inverted())
    fig.text(0.5, box.y0 + 0.1 * box.height, note, ha="center", va="bottom", fontsize=8.5, color="dimgrey")


# Methods often find the very same circuit (TPR 1, FPR 0): each draws its own marker shape, smaller
# and on top the later it comes, so a point under another's still shows.
_MARKERS = ["o", "s", "D", "^", "v"]


def _marker(method: str, size: float) -> dict:
    rank = method_rank(method)[0]
    return dict(marker=_MARKERS[rank % len(_MARKERS)], s=size * 0.72 ** rank, zorder=3 + 0.1 * rank)


def _ordered_methods(methods) -> list[str]:
    return sorted(set(methods), key=method_rank)


# ---- figure 3: edge-level ROC per task ----------------------------------------------------------------
def draw_roc(points: pd.DataFrame, tasks: list[str], corruptions: list[str], level: str = "edge"):
    """One panel per task (rows: corruptions): each method's pessimistic staircase through its Pareto
    front, the front's circuits as ringed markers and the others as dots, shaded by the method's
    parameter.  Returns (figure, AUC rows drawn, tasks left out for lack of points)."""
    rated = points[points[f"{level}_tpr"].notna()]
    shown = [t for t in tasks if (rated.task == t).any()]
    if not shown:
        raise FigureError(f"no complete run with a canonical circuit for {', '.join(tasks) or 'any task'}")
    norms = _shades(rated)
    fig, axes = plt.subplots(len(corruptions), len(shown), figsize=(3.3 * len(shown) + 1.6, 3.6 * len(corruptions)),
                             squeeze=False, layout="constrained")
    drawn = []
    for row, corruption in enumerate(corruptions):
        for col, task in enumerate(shown):
            ax = axes[row][col]
            panel = rated[(rated.task == task) & (rated.corruption == corruption)]
            for method in _ordered_methods(panel.method):
                group = panel[panel.method == method]
                pairs = list(zip(group[f"{level}_fpr"].astype(float), group[f"{level}_tpr"].astype(float)))
                auc = roc_auc(pairs)
                drawn.append(dict(task=task, corruption=corruption, metric=group.metric.iloc[0], method=method,
                                  level=level, auc=auc, n_points=len(pairs)))
                xs, ys = roc_staircase(pairs)
                ax.plot(xs, ys, color=_method_color(method), lw=1.8, zorder=2,
                        label=f"{_label(method_labels(), method)} (AUC {auc:.2f})")
                front = set(pareto_front(roc_points(pairs)))
                colours = _shade_map(method)(norms[method](group["parameter"].astype(float).to_numpy()))
                on_front = np.array([p in front for p in pairs])
                fx, fy = np.array(pairs).T
                ax.scatter(fx[~on_front], fy[~on_front], c=colours[~on_front], alpha=0.8, lw=0, **_marker(method, 18))
                front_marker = _marker(method, 48)
                ax.scatter(fx[on_front], fy[on_front], c=colours[on_front], edgecolor="black", lw=0.6,
                           **dict(front_marker, zorder=front_marker["zorder"] + 1))
            ax.plot([0, 1], [0, 1], color="grey", lw=0.7, ls=":", zorder=1)
            ax.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03), aspect="equal")
            metric = panel.metric.iloc[0] if len(panel) else ""
            title = _label(TASK_LABELS, task) + (f"\n{corruption} ablation, {_label(METRIC_LABELS, metric)}"
                                                 if metric else "")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(f"false positive rate ({level}s)", fontsize=9)
            if col == 0:
                ax.set_ylabel(f"true positive rate ({level}s)", fontsize=9)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.25)
            if len(panel):
                ax.legend(loc="lower right", fontsize=7.5, framealpha=0.85)
            else:
                ax.text(0.5, 0.5, "no complete runs", ha="center", va="center", color="grey", transform=ax.transAxes)
    _add_parameter_colorbars(fig, axes, norms, _parameters(rated))
    _titles(fig, f"{level.capitalize()}-level ROC against the canonical circuit",
            "ringed: circuits on the Pareto front, dots: circuits off it; shade: the method's parameter")
    return fig, drawn, [t for t in tasks if t not in shown]


# ---- figure 4: the metric against circuit size (Induction) ---------------------------------------------
def _empty_circuit_metric(runs) -> float | None:
    """The test metric with every edge removed, from any run of the panel (all runs share it)."""
    for run in runs:
        summary = json.loads((Path(run) / SUMMARY).read_text())
        value = (summary.get("test") or {}).get("metric_empty")
        if value is not None:
            return float(value)
    return None


def draw_metric_vs_edges(points: pd.DataFrame, task: str, corruptions: list[str]):
    """One panel per corruption: each method's circuits, test metric against edges kept (log axis),
    shaded by the method's parameter.  Circuits with no edge sit on the dashed line of the empty
    circuit instead (a log axis has no 0)."""
    points = points[points.task == task]
    if points.empty:
        raise FigureError(f"no complete run of task {task}")
    norms = _shades(points)
    fig, axes = plt.subplots(1, len(corruptions), figsize=(5.0 * len(corruptions) + 1.6, 4.3), squeeze=False,
                             sharey=True, layout="constrained")
    largest = max(int(points.n_edges.max()), 1)
    for col, corruption in enumerate(corruptions):
        ax = axes[0][col]
        panel = points[points.corruption == corruption]
        for method in _ordered_methods(panel.method):
            group = panel[(panel.method == method) & (panel.n_edges > 0)].sort_values("n_edges")
            ax.plot(group.n_edges, group.test_metric, color=_method_color(method), lw=1.0, alpha=0.6, zorder=2)
            colours = _shade_map(method)(norms[method](group["parameter"].astype(float).to_numpy()))
            ax.scatter(group.n_edges, group.test_metric, c=colours, edgecolor="black", lw=0.4,
                       label=_label(method_labels(), method), **_marker(method, 40))
        empty = _empty_circuit_metric(panel.run.unique()) if len(panel) else None
        if empty is not None:
            ax.axhline(empty, color="grey", ls="--", lw=0.9, label="empty circuit (0 edges)")
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_xscale("log")
        ax.set_xlim(0.8, largest * 1.3)
        metric = panel.metric.iloc[0] if len(panel) else "metric"
        ax.set_title(f"{_label(TASK_LABELS, task)}: {corruption} ablation", fontsize=10)
        ax.set_xlabel("edges in the circuit (log scale)", fontsize=9)
        if col == 0:
            ax.set_ylabel(f"{_label(METRIC_LABELS, metric)} on the test split", fontsize=9)
        ax.grid(alpha=0.25, which="both")
        ax.tick_params(labelsize=8)
        if len(panel):
            legend = ax.legend(fontsize=8, loc="lower left")  # small circuits sit high, large ones low right
            for handle, text in zip(legend.legend_handles, legend.get_texts()):
                method = next((m for m, lab in method_labels().items() if lab == text.get_text()), None)
                if method:  # the legend shows the method's hue, not one point's shade
                    handle.set_facecolor(_method_color(method))
        else:
            ax.text(0.5, 0.5, "no complete runs", ha="center", va="center", color="grey", transform=ax.transAxes)
    _add_parameter_colorbars(fig, axes, norms, _parameters(points))
    _titles(fig, f"{_label(TASK_LABELS, task)}: faithfulness against circuit size",
            "each point a circuit; shade: the method's parameter")
    return fig


# ---- the appendix tables ------------------------------------------------------------------------------
TABLE_COLUMNS = ["level", "task", "method", "metric_kind", "metric", "corruption", "auc", "n_points"]


def auc_long(points: pd.DataFrame, exp: DictConfig, tasks: list[str]) -> pd.DataFrame:
    """One row per (level, task, method, metric column, corruption): the AUC of the pessimistic ROC
    staircase (``report.auc_table``), labelled with the column of the paper's table it fills."""
    aucs = auc_table(points)
    rows = []
    for _, row in aucs.iterrows():
        if row.task not in tasks:
            continue
        for kind, metric in task_metrics(exp, row.task).items():
            if metric == row.metric:
                rows.append(dict(level=row.level, task=row.task, method=row.method, metric_kind=kind,
                                 metric=metric, corruption=row.corruption, auc=float(row.auc),
                                 n_points=int(row.n_points)))
    frame = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    frame["_task"], frame["_method"] = frame.task.map(tasks.index), frame.method.map(method_rank)
    frame = frame.sort_values(["level", "_task", "_method", "metric_kind", "corruption"], kind="stable")
    return frame.drop(columns=["_task", "_method"]).reset_index(drop=True)


def draw_auc_heatmap(long: pd.DataFrame, tasks: list[str], corruptions: list[str]):
    """Edge- and node-level AUC side by side: a row per task, a column per (method, ablation), each
    cell written out; blank where a sweep has no complete run."""
    methods = _ordered_methods(long.method) if len(long) else []
    columns = [(m, c) for m in methods for c in corruptions]
    fig, axes = plt.subplots(1, 2, figsize=(2.2 + 1.0 * len(columns) * 2, 1.2 + 0.42 * len(tasks)),
                             squeeze=False, layout="constrained")
    for ax, level in zip(axes[0], ("edge", "node")):
        grid = np.full((len(tasks), len(columns)), np.nan)
        part = long[long.level == level]
        for _, row in part.iterrows():
            if row.task in tasks and (row.method, row.corruption) in columns:
                grid[tasks.index(row.task), columns.index((row.method, row.corruption))] = row.auc
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value < 0.6 else "black")
        ax.set_xticks(range(len(columns)), [f"{_label(method_labels(), m)}\n{c}" for m, c in columns], fontsize=7)
        ax.set_yticks(range(len(tasks)), [_label(TASK_LABELS, t) for t in tasks], fontsize=7)
        ax.set_title(f"{level}-level AUC", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8, label="AUC")
    fig.suptitle("tracr suite: AUC against program-derived circuits", fontsize=10)
    return fig


def _table_columns(exp: DictConfig, corruptions: list[str]) -> list[tuple[str, str]]:
    kinds = list(dict.fromkeys(k for t in exp.metrics for k in task_metrics(exp, t)))
    return [(kind, corruption) for kind in kinds for corruption in corruptions]


def auc_wide(long: pd.DataFrame, level: str, columns: list[tuple[str, str]]) -> pd.DataFrame:
    """The paper's layout: a row per task and method, a column per (metric, corruption)."""
    part = long[long.level == level]
    index = list(dict.fromkeys(zip(part.task, part.method)))
    wide = pd.DataFrame(index=pd.MultiIndex.from_tuples(index, names=["task", "method"]),
                        columns=[f"{_label(METRIC_KIND_LABELS, k)}, {c}" for k, c in columns], dtype=float)
    for _, row in part.iterrows():
        wide.loc[(row.task, row.method), f"{_label(METRIC_KIND_LABELS, row.metric_kind)}, {row.corruption}"] = row.auc
    return wide


def auc_markdown(long: pd.DataFrame, exp: DictConfig, corruptions: list[str]) -> str:
    """Both levels as Markdown tables; per task and column the best method in bold, "–" where the
    task has no such metric or no complete runs."""
    columns = _table_columns(exp, corruptions)
    lines = []
    for level in ("edge", "node"):
        wide = auc_wide(long, level, columns)
        lines += [f"### {level.capitalize()}-level AUC", ""]
        lines.append("| task | method | " + " | ".join(wide.columns) + " |")
        lines.append("| --- | --- | " + " | ".join("---:" for _ in wide.columns) + " |")
        for (task, method), row in wide.iterrows():
            cells = []
            for column, value in row.items():
                best = wide.loc[task][column].max()
                text = "–" if pd.isna(value) else f"{value:.3f}"
                cells.append(f"**{text}**" if not pd.isna(value) and value == best else text)
            metrics = task_metrics(exp, task)
            named = ", ".join(f"{_label(METRIC_KIND_LABELS, k)}: {m}" for k, m in metrics.items())
            lines.append(f"| {_label(TASK_LABELS, task)} ({named}) | {_label(method_labels(), method)} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# ---- manifest -------------------------------------------------------------------------------------
def _relative(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run_records(folders: list[Path]) -> list[dict]:
    records = []
    for folder in folders:
        summary = json.loads((Path(folder) / SUMMARY).read_text())
        record = {key: summary.get(key) for key in ("task", "method", "corruption", "metric", "graph", "seed",
                                                    "parameter_name", "parameter", "n_edges_kept", "config_hash")}
        if summary.get("curve"):
            record["curve_points"] = len(pd.read_csv(Path(folder) / summary["curve"]))
        records.append(dict(path=_relative(folder), **record))
    return records


def write_manifest(path: Path, plan_: Plan, outcomes: list[SweepOutcome], outputs: list[Path], argv: list[str],
                   started: float, **extra) -> None:
    manifest = dict(
        experiment=plan_.exp.name,
        created=datetime.datetime.now().isoformat(timespec="seconds"),
        command=argv,
        circuitfind_version=__version__,
        preset=plan_.preset,
        tasks=plan_.tasks,
        corruptions=plan_.corruptions,
        skipped_tasks=plan_.skipped,
        outputs=[_relative(p) for p in outputs],
        wall_s=round(time.time() - started, 1),
        sweeps=[dict(task=o.sweep.task, method=o.sweep.method, corruption=o.sweep.corruption, metric=o.sweep.metric,
                     parameter=o.sweep.parameter, values=list(o.sweep.values), overrides=list(o.sweep.overrides),
                     folder=_relative(o.sweep.folder), status=o.status, ran=len(o.ran), wall_s=o.wall_s,
                     errors=o.errors, command=["circuitfind", *_cli_arguments(o.sweep)])
                for o in outcomes],
        runs=run_records(used_runs(plan_.sweeps)),
        experiment_config=OmegaConf.to_container(plan_.exp, resolve=True),
        **extra,
    )
    atomic_write_text(path, json.dumps(manifest, indent=2, default=str) + "\n")


# ---- the commands ---------------------------------------------------------------------------------
def _save(fig, base: Path) -> list[Path]:
    paths = [base.with_suffix(".png"), base.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=150)
    plt.close(fig)
    return paths


def build(name: str, tasks: list[str] | None = None, corruption: str | None = None, preset: str | None = None,
          jobs: int = 2, out: Path = Path("outputs/figures"), runs: Path | None = None, config: str | None = None,
          extra: tuple[str, ...] = (), dry_run: bool = False, argv: list[str] | None = None, echo=print,
          launcher: str = "auto") -> dict:
    """Build experiment ``name`` (its config, or ``config``); returns the outputs and the plan."""
    started = time.time()
    exp = load_experiment(config or name)
    if exp.name != name:
        raise FigureError(f"{config} is the config of {exp.name}, not {name}")
    runs = (runs if runs is not None else out / "runs").resolve()  # the sweeps' subprocesses get absolute paths
    plan_ = plan(exp, preset, tasks, corruption, runs, tuple(extra))
    for task, reason in plan_.skipped.items():
        echo(f"note: {name} leaves out {task}: {reason} (name it in TASKS=... to run it anyway)")
    if not plan_.sweeps:
        raise FigureError(f"{name}: no task to run")
    if dry_run:
        for sweep in plan_.sweeps:
            wanted = len(sweep.values or (None,))
            echo(f"  {sweep.task} {sweep.method} {sweep.corruption}/{sweep.metric}: "
                 f"{wanted - len(missing_values(sweep))}/{wanted} complete in {_relative(sweep.folder)}")
        return dict(plan=plan_, outputs=[])
    outcomes = run_sweeps(plan_.sweeps, jobs, echo, launcher)
    folders = used_runs(plan_.sweeps)
    if not folders:
        raise FigureError(f"{name}: no sweep produced a complete run (see the sweep.log files under {runs})")
    points = collect_points(folders)
    out.mkdir(parents=True, exist_ok=True)
    extra_manifest: dict = {}
    if exp.figure == "roc":
        fig, drawn, empty = draw_roc(points, plan_.tasks, plan_.corruptions, exp.get("level", "edge"))
        for task in empty:
            echo(f"note: {name} has no complete runs of {task}: no panel")
        stem = f"{name}_{'_'.join(plan_.corruptions)}"
        outputs = _save(fig, out / stem)
        extra_manifest["auc"] = drawn
    elif exp.figure == "metric_vs_edges":
        (task,) = plan_.tasks if len(plan_.tasks) == 1 else (None,)
        if task is None:
            raise FigureError(f"{name} draws one task, got {plan_.tasks}")
        stem = name
        outputs = _save(draw_metric_vs_edges(points, task, plan_.corruptions), out / stem)
    elif exp.figure == "auc_tables":
        stem = name
        long = auc_long(points, exp, plan_.tasks)
        columns = _table_columns(exp, plan_.corruptions)
        outputs = [out / f"{stem}_auc.md", out / f"{stem}_auc_long.csv"]
        title = (f"# AUC of the ROC curves against the canonical circuits\n\npreset {plan_.preset}; "
                 f"{len(folders)} runs; pessimistic staircase AUC (`evaluation.roc_auc`); "
                 "bold: the best method per task and column.\n\n")
        atomic_write_text(outputs[0], title + auc_markdown(long, exp, plan_.corruptions))
        long.to_csv(outputs[1], index=False)
        for level in ("edge", "node"):
            path = out / f"{stem}_auc_{level}.csv"
            auc_wide(long, level, columns).to_csv(path, float_format="%.4f")
            outputs.append(path)
        if exp.get("heatmap", False):
            outputs += _save(draw_auc_heatmap(long, plan_.tasks, plan_.corruptions), out / f"{stem}_auc")
        echo(auc_markdown(long, exp, plan_.corruptions))
    else:
        raise FigureError(f"{exp.name}: unknown figure kind {exp.figure!r} (roc, metric_vs_edges, auc_tables)")
    manifest = out / f"{stem}.manifest.json"
    write_manifest(manifest, plan_, outcomes, outputs, argv or [], started, **extra_manifest)
    failed = [o for o in outcomes if o.status == "failed"]
    echo(f"{name}: {len(folders)} runs ({sum(o.status == 'reused' for o in outcomes)} sweeps reused, "
         f"{len(failed)} with failed jobs) -> {', '.join(_relative(p) for p in outputs)}; "
         f"manifest {_relative(manifest)}; {time.time() - started:.0f} s")
    return dict(plan=plan_, outcomes=outcomes, outputs=outputs, manifest=manifest, points=points)


def _names(values: list[str] | None) -> list[str] | None:
    """--tasks a b, --tasks a,b or --tasks "a b" (make passes TASKS as one word or several)."""
    if not values:
        return None
    return [name for value in values for name in re.split(r"[,\s]+", value) if name]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m circuitfind.figures", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=EXPERIMENTS, help="which figure or table to build")
    parser.add_argument("--tasks", nargs="+",
                        help="tasks to draw (default: the experiment's, where their weights are here)")
    parser.add_argument("--corruption", choices=("zero", "corrupted"), help="one ablation instead of the experiment's")
    parser.add_argument("--preset", choices=PRESETS, help="sweep sizes (default: the experiment's, quick)")
    parser.add_argument("--jobs", type=int, default=2, help="joblib's parallel jobs per sweep (default 2)")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="auto",
                        help="the Hydra launcher of the sweeps (auto, per sweep: joblib for several jobs on more than two cores, "
                             "else the basic launcher in this process)")
    parser.add_argument("--out", type=Path, default=Path("outputs/figures"), help="where figures go")
    parser.add_argument("--runs", type=Path, default=None, help="where sweeps go (default: OUT/runs)")
    parser.add_argument("--config", help="an experiment config file instead of figure_specs/NAME.yaml")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="a circuitfind override for every run (e.g. seed=1); part of the sweeps' identity")
    parser.add_argument("--dry-run", action="store_true", help="list the sweeps and what they hold; run nothing")
    args = parser.parse_args(argv)
    try:
        build(args.experiment, _names(args.tasks), args.corruption, args.preset, args.jobs, args.out, args.runs,
              args.config, tuple(args.extra), args.dry_run, ["python", "-m", "circuitfind.figures", *argv],
              launcher=args.launcher)
    except (FigureError, OSError) as error:
        print(f"circuitfind.figures: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
