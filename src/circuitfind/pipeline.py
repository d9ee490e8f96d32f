"""One run, start to finish: config -> task + model -> graph -> method -> evaluation -> run folder.

Everything the CLI does besides parsing lives here, so tests and notebooks can call ``run(cfg, folder)``.
"""

from __future__ import annotations

import inspect
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
from .graph import GRANULARITIES, Architecture, EdgeMask, Graph
from .methods import METHODS, Problem, get_method
from .checkpoint import Checkpointer
from .draw import check_draw_option, circuit_dot, draw_circuit
from .methods.acdc import check_acdc_params
from .methods.hisp import check_hisp_params
from .methods.sp import check_sp_params
from .rundir import (SUMMARY, atomic_write_text, config_hash, copy_run, folder_state, publish_run, read_summary,
                     store_folder, write_edges, write_summary, write_table, write_trace)
from .tasks import TASKS, build_task

log = logging.getLogger("circuitfind")
CORRUPTIONS = ("corrupted", "zero", "mean", "mean_all")
# The parameter each method's curve is swept over (HISP reports its own: the k it kept).
PARAMETER_NAMES = {"acdc": "tau", "sp": "lambda_reg", "hisp": "k"}
# Each method's own parameter check, run on the config before anything loads (tau is top-level).
_METHOD_CHECKS = {"acdc": check_acdc_params, "sp": check_sp_params, "hisp": check_hisp_params}
CURVE = "curve.csv"


class ConfigError(ValueError):
    """A config value that is wrong before anything is loaded."""


def _choice(kind: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {kind} {value!r}; choose one of {', '.join(sorted(valid))}")


def validate(cfg: DictConfig) -> None:
    """Check every config value before any model is loaded."""
    _choice("task", cfg.task.name, TASKS)
    _choice("method", cfg.method.name, METHODS)
    _choice("corruption", cfg.corruption.name, CORRUPTIONS)
    _choice("graph", cfg.graph.granularity, GRANULARITIES)
    check = _METHOD_CHECKS.get(cfg.method.name)
    if check is not None:
        accepted = inspect.signature(check).parameters
        params = {k: v for k, v in _method_params(cfg).items() if k in accepted}
        try:
            check(**params)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    if OmegaConf.select(cfg, "threshold.name") == "paper" and cfg.method.name in ("acdc", "sp"):
        _check_paper_sweep(cfg)
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed must be an integer, got {cfg.seed!r}")
    try:
        check_draw_option(cfg.get("draw", "auto"))
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _check_paper_sweep(cfg: DictConfig) -> None:
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
    if cfg.method.name == "acdc" and OmegaConf.select(cfg, "task.sweeps.acdc") is None:
        raise ConfigError(f"threshold=paper has no ACDC sweep for task {cfg.task.name} (task.sweeps.acdc is not set)")


def compose_config(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
    """The config ``circuitfind <overrides>`` would run, composed without running it (notebooks,
    benchmarks, figures)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="circuitfind.configs", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def build_problem(cfg: DictConfig) -> Problem:
    """The task, model, graph and metric a config names, bundled for a method."""
    task = build_task(cfg.task.name, **_task_params(cfg))
    graph = Graph(Architecture.from_config(task.model.cfg, split_embed=task.split_embed), cfg.graph.granularity)
    return Problem(task, graph, cfg.corruption.name, task.metric(cfg.metric), progress=cfg.progress)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _task_params(cfg: DictConfig) -> dict:
    params = {k: v for k, v in OmegaConf.to_container(cfg.task, resolve=True).items()
              if k not in ("name", "tau", "sweeps")}
    return dict(params, seed=cfg.seed, device=cfg.device, model=OmegaConf.to_container(cfg.model, resolve=True))


def _method_params(cfg: DictConfig) -> dict:
    params = {k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items() if k != "name"}
    return dict(params, tau=cfg.tau, seed=cfg.seed)


def _rates(found: EdgeMask, canonical: EdgeMask | None) -> dict:
    """Edge and node TPR/FPR against the canonical circuit (None where the task has none)."""
    if canonical is None:
        return dict.fromkeys(("edge_tpr", "edge_fpr", "node_tpr", "node_fpr"), None)
    return edge_and_node_rates(found, canonical)


def _evaluate_curve(problem: Problem, canonical: EdgeMask | None, curve) -> list[dict]:
    """One row per circuit of a method that yields a whole curve from one run (HISP's top-k):
    the same numbers a run's summary has for its own circuit, the test metric included."""
    rows = []
    for parameter, mask, label in tqdm(curve, desc="curve", unit="circuit", disable=not problem.progress,
                                       leave=False):
        rows.append(dict(parameter=parameter, n_edges=mask.n_kept, **_rates(mask, canonical),
                         metric_test=problem.evaluate(mask, "test"), removed=label))
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
    store_run = sweep_store_run(cfg, identity)
    if state == "empty" and store_run is not None and not cfg.get("force", False) \
            and copy_run(store_run, folder, identity):
        log.info("copied this config's complete run from %s (force=true recomputes it)", store_run)
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
    task, graph = problem.task, problem.graph
    method = get_method(cfg.method.name)
    params = _method_params(cfg)
    if "checkpointer" in inspect.signature(method).parameters:
        params["checkpointer"] = checkpointer
    with checkpointer.stop_on_signals():
        result = method(problem, **params)

    canonical = canonical_mask(task, graph)
    rates = _rates(result.kept, canonical)
    nothing = EdgeMask(graph, torch.zeros(graph.n_edges))
    # The full circuit's metric is read off the clean logits every metric already compares against
    # (the same forward: nothing removed = the model), saving a GPT-2 forward per split.
    metrics = {
        split: dict(
            metric_full=float(problem.per_prompt(problem.clean_logits(split), split).mean()),
            metric_circuit=problem.evaluate(result.kept, split),
            metric_empty=problem.evaluate(nothing, split),
        )
        for split in ("validation", "test")
    }
    curve = _evaluate_curve(problem, canonical, result.extras["curve"]) if "curve" in result.extras else None
    n_forward = sum(engine.n_forward for engine in problem._engines.values())
    parameter_name, parameter = result.extras.get(
        "parameter", (PARAMETER_NAMES.get(cfg.method.name), cfg.tau if cfg.method.name == "acdc" else None))

    write_edges(folder, result, canonical)
    write_trace(folder, result.extras.get("trace", []))
    draw = cfg.get("draw", "auto")
    if draw is not False:  # auto: the detailed drawing while it stays readable, else the block summary
        draw_circuit(result, folder / "circuit.png", f"{task.name} {cfg.method.name} ({cfg.corruption.name})",
                     detail=None if draw == "auto" else True)
    atomic_write_text(folder / "circuit.dot", circuit_dot(result))
    for filename, rows in result.extras.get("tables", {}).items():
        write_table(folder, filename, rows)
    if curve is not None:
        write_table(folder, CURVE, curve)
    summary = dict(
        task=task.name,
        method=cfg.method.name,
        method_label=result.extras.get("label", cfg.method.name),  # a variant the report plots apart
        corruption=cfg.corruption.name,
        graph=graph.granularity,
        model=task.model.cfg.model_name,
        metric=problem.metric.name,
        tau=cfg.tau if cfg.method.name == "acdc" else None,
        parameter_name=parameter_name,  # what this method's curve is swept over (tau, lambda_reg, k)
        parameter=parameter,
        seed=cfg.seed,
        n_edges_total=graph.n_edges,
        n_edges_kept=result.kept.n_kept,
        **metrics["validation"],
        test=metrics["test"],
        **rates,
        n_forward=n_forward,
        n_edge_tests=result.extras.get("n_edge_tests"),
        curve=CURVE if curve is not None else None,  # one row per circuit of a one-run curve (HISP)
        method_details=result.extras.get("summary"),
        wall_s=round(time.time() - started, 3),
        device=str(cfg.device),
        config_hash=identity,
        circuitfind_version=__version__,
        complete=True,
    )
    write_summary(folder, summary)  # last: its presence marks the run complete
    checkpointer.clear()
    if store_run is not None:
        publish_run(folder, store_run, identity)
    return summary


def sweep_store_run(cfg: DictConfig, identity: str) -> Path | None:
    """In a ``-m`` sweep, where the store (``store``, default outputs/runs) keeps this config's run;
    None for single runs (their folder is the store's) and outside Hydra."""
    if not cfg.get("store"):
        return None
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return store_folder(Path(cfg.store), cfg, identity)
