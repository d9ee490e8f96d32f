"""A figure's sweeps: planned runs of one method on one task, ablation and metric, kept in a folder
named by their settings, run through the ``circuitfind -m`` command line and a Hydra launcher, and
reused: a value with a complete run folder (``summary.json``) is never run again.

A ``Sweep`` here is a set of runs; what a method's sweep varies (ACDC's tau, SP's lambda) is its
spec's ``SweptParameter`` (``methods.spec``).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..methods.spec import SweptParameter, get_spec
from ..runs.rundir import SUMMARY


def swept(method: str) -> SweptParameter | None:
    """What a sweep of ``method`` varies (its spec's); None for a method whose one run gives its curve."""
    return get_spec(method).sweep


def relative(path: Path) -> str:
    """``path`` relative to the working folder where it lies inside it (for messages and manifests)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


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
        return swept(self.method).key if self.values else None

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
# (summary.json) for its value.
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
        parameter, short = swept(sweep.method).key, swept(sweep.method).short
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


def cli_arguments(sweep: Sweep) -> list[str]:
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

    from .. import cli

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
            line += f", {len(missing_values(sweep))} without a complete run (see {relative(sweep.folder / 'sweep.log')})"
            line += "".join(f"\n      {e}" for e in outcome.errors[:2])
        echo(line)
    return [outcomes[sweep] for sweep in sweeps]


def used_runs(sweeps: list[Sweep]) -> list[Path]:
    """The complete run folders of the planned values only (a sweep folder may hold more)."""
    return [folder for sweep in sweeps for folder in complete_runs(sweep).values()]
