"""One run, start to finish: config -> task + model -> graph -> method -> evaluation -> run folder.

Everything the CLI does besides parsing lives here, so tests and notebooks can call ``run(cfg, folder)``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from . import __version__
from .evaluation import canonical_mask, edge_and_node_rates
from .circuit_json import CircuitFileError, ground_truth, read_circuit_file
from .graph import GRANULARITIES, Architecture, CurvePoint, EdgeMask, EdgeScores, Graph
from .methods import Problem
from .methods.spec import MethodSpec, get_spec, load_specs
from .checkpoint import Checkpointer
from .rundir import CURVE, SUMMARY, config_hash, folder_state, read_summary, write_result, write_summary
from .pairs_file import PairsFileError, read_pairs
from .tasks import TASKS, build_task

log = logging.getLogger("circuitfind")
CORRUPTIONS = ("corrupted", "zero", "mean", "mean_all")


class ConfigError(ValueError):
    """A config value that is wrong before anything is loaded."""


def _choice(kind: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {kind} {value!r}; choose one of {', '.join(sorted(valid))}")


def validate(cfg: DictConfig) -> None:
    """Check every config value before any model is loaded."""
    _choice("task", cfg.task.name, TASKS)
    _choice("method", cfg.method.name, load_specs())
    _choice("corruption", cfg.corruption.name, CORRUPTIONS)
    _choice("graph", cfg.graph.granularity, GRANULARITIES)
    spec = get_spec(cfg.method.name)
    method_params(cfg, spec)
    if OmegaConf.select(cfg, "threshold.name") == "paper" and spec.sweep is not None:
        _check_paper_sweep(cfg, spec)
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed must be an integer, got {cfg.seed!r}")
    try:  # the files a run reads, parsed now (no torch, no model) so that a bad one fails at once
        if cfg.task.name == "pairs":
            if not OmegaConf.select(cfg, "task.path"):
                raise ConfigError("task=pairs needs task.path=<a CSV or JSONL file of prompt pairs>")
            read_pairs(cfg.task.path, cfg.metric)
        if ground_truth_path(cfg) is not None:
            read_circuit_file(ground_truth_path(cfg))
    except (PairsFileError, CircuitFileError) as error:
        raise ConfigError(str(error)) from None


# task.ground_truth values that name a task's own circuit rather than a file (tracr: issue 16).
GROUND_TRUTH_WORDS = ("paper", "program")


def ground_truth_path(cfg: DictConfig) -> str | None:
    """The circuit file ``task.ground_truth`` names, or None (the task's own circuit, if any)."""
    value = OmegaConf.select(cfg, "task.ground_truth")
    return None if value is None or value in GROUND_TRUTH_WORDS else str(value)


def _check_paper_sweep(cfg: DictConfig, spec: MethodSpec) -> None:
    """threshold=paper's values are resolved once per command, for the task and method Hydra composed
    first (configs/threshold/paper.yaml): refuse jobs that would run another task's values."""
    here = f"{cfg.task.name}/{cfg.method.name}"
    swept_for = OmegaConf.select(cfg, "threshold.swept_for")
    if swept_for is None:
        raise ConfigError(f"threshold=paper is a sweep: run it with -m (circuitfind -m task={cfg.task.name} "
                          f"method={cfg.method.name} threshold=paper)")
    if swept_for != here:
        raise ConfigError(f"threshold=paper sweeps one task and one method per command; this job ({here}) got the "
                          f"values of {swept_for}: run it as its own sweep")
    if spec.sweep.needs_task_values and OmegaConf.select(cfg, f"task.sweeps.{spec.name}") is None:
        raise ConfigError(f"threshold=paper has no {spec.label} sweep for task {cfg.task.name} "
                          f"(task.sweeps.{spec.name} is not set)")


def compose_config(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
    """The config ``circuitfind <overrides>`` would run, composed without running it (notebooks,
    benchmarks, figures)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="circuitfind.configs", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def build_problem(cfg: DictConfig) -> Problem:
    """The task, model, graph and metric a config names, bundled for a method."""
    task = build_task(cfg.task.name, **_task_params(cfg))
    if ground_truth_path(cfg) is not None:  # a circuit file replaces the task's own canonical circuit
        task.canonical_edges = ground_truth(ground_truth_path(cfg))
    graph = Graph(Architecture.from_config(task.model.cfg, split_embed=task.split_embed), cfg.graph.granularity)
    return Problem(task, graph, cfg.corruption.name, task.metric(cfg.metric), progress=cfg.progress)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _task_params(cfg: DictConfig) -> dict:
    params = {k: v for k, v in OmegaConf.to_container(cfg.task, resolve=True).items()
              if k not in ("name", "tau", "sweeps", "ground_truth")}
    return dict(params, seed=cfg.seed, device=cfg.device, model=OmegaConf.to_container(cfg.model, resolve=True))


def method_params(cfg: DictConfig, spec: MethodSpec):
    """The method's typed, checked parameters: its config group and the spec's top-level keys."""
    try:
        return spec.check(OmegaConf.to_container(cfg.method, resolve=True),
                          {key: OmegaConf.select(cfg, key) for key in spec.top_level})
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None


def _rates(found: EdgeMask, canonical: EdgeMask | None) -> dict:
    """Edge and node TPR/FPR against the canonical circuit (None where the task has none)."""
    if canonical is None:
        return dict.fromkeys(("edge_tpr", "edge_fpr", "node_tpr", "node_fpr"), None)
    return edge_and_node_rates(found, canonical)


def _evaluate_curve(problem: Problem, canonical: EdgeMask | None, curve: list[CurvePoint]) -> list[dict]:
    """One row per circuit of a method that yields a whole curve from one run (HISP's top-k):
    the same numbers a run's summary has for its own circuit, the test metric included."""
    rows = []
    for point in tqdm(curve, desc="curve", unit="circuit", disable=not problem.progress, leave=False):
        rows.append(dict(parameter=point.parameter, n_edges=point.circuit.n_kept, **_rates(point.circuit, canonical),
                         metric_test=problem.evaluate(point.circuit, "test"), removed=point.removed))
    return rows


def run(cfg: DictConfig, folder: Path) -> dict:
    """Run the configured method and write the run folder; returns the summary.

    A folder is keyed by its config: one holding a complete run of this config is reused as it is
    (``force=true`` recomputes it), one holding a checkpoint of it resumes (``resume=false`` starts
    over), and one holding another config's results is refused, never overwritten."""
    validate(cfg)
    folder = Path(folder)
    identity = config_hash(cfg)
    state = folder_state(folder, identity)
    if state == "complete" and not cfg.get("force", False):
        log.info("%s already holds this run (config %s); force=true recomputes it", folder, identity)
        return dict(read_summary(folder), reused=True)
    if state == "complete":  # force: the old summary goes first, so a crash cannot pair it with new files
        (folder / SUMMARY).unlink()
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    seed_everything(cfg.seed)
    every = cfg.get("checkpoint") or {}
    checkpointer = Checkpointer(folder, identity, every_steps=every.get("every_steps", 100),
                                every_seconds=every.get("every_seconds", 60.0))
    if state == "resumable" and not cfg.get("resume", True):
        checkpointer.clear()

    problem = build_problem(cfg)
    spec = get_spec(cfg.method.name)
    params = dataclasses.asdict(method_params(cfg, spec))
    if spec.checkpoints:
        params["checkpointer"] = checkpointer
    with checkpointer.stop_on_signals():
        result = spec.function()(problem, **params)

    summary = write_run_folder(folder, problem, result, method=cfg.method.name, tau=cfg.tau, seed=cfg.seed,
                               device=cfg.device, identity=identity, started=started)
    checkpointer.clear()
    return summary


def write_run_folder(folder: Path, problem: Problem, result: EdgeScores, *, method: str, tau: float | None,
                     seed: int, device, identity: str | None, started: float) -> dict:
    """Evaluate ``result`` (metrics on both splits, rates against the canonical circuit, a method's
    curve) and write every file of the run folder, ``summary.json`` last; returns the summary.
    The CLI and the Python API (``circuitfind.api``) both finish a run here."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    task, graph = problem.task, problem.graph
    canonical = canonical_mask(task, graph)
    rates = _rates(result.kept, canonical)
    nothing = EdgeMask(graph, torch.zeros(graph.n_edges))
    metrics = {
        split: dict(
            metric_full=problem.evaluate(graph.full_mask(), split),
            metric_circuit=problem.evaluate(result.kept, split),
            metric_empty=problem.evaluate(nothing, split),
        )
        for split in ("validation", "test")
    }
    curve = _evaluate_curve(problem, canonical, result.curve) if result.curve is not None else None
    n_forward = sum(engine.n_forward for engine in problem._engines.values())
    spec = get_spec(method)

    write_result(folder, result, canonical, curve, title=f"{task.name} {method} ({problem.corruption})")
    summary = dict(
        task=task.name,
        method=method,
        method_label=result.label or method,  # a variant the report plots apart
        corruption=problem.corruption,
        graph=graph.granularity,
        model=task.model.cfg.model_name,
        metric=problem.metric.name,
        tau=tau if "tau" in spec.top_level else None,
        parameter_name=spec.parameter,  # what this method's curve varies (tau, lambda_reg, k)
        parameter=result.parameter,
        seed=seed,
        n_edges_total=graph.n_edges,
        n_edges_kept=result.kept.n_kept,
        **metrics["validation"],
        test=metrics["test"],
        **rates,
        n_forward=n_forward,
        n_edge_tests=len(result.trace) if result.trace is not None else None,
        curve=CURVE if curve is not None else None,  # one row per circuit of a one-run curve (HISP)
        method_details=result.details or None,
        wall_s=round(time.time() - started, 3),
        device=str(device),
        config_hash=identity,
        circuitfind_version=__version__,
        complete=True,
    )
    write_summary(folder, summary)  # last: its presence marks the run complete
    return summary
