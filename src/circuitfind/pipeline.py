"""One run, start to finish: config -> task + model -> graph -> method -> evaluation -> run folder.

Everything the CLI does besides parsing lives here, so tests and notebooks can call ``run(cfg, folder)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import __version__
from .evaluation import canonical_mask, edge_and_node_rates
from .graph import GRANULARITIES, Architecture, EdgeMask, Graph
from .methods import METHODS, Problem, get_method
from .rundir import write_edges, write_summary, write_trace
from .tasks import TASKS, build_task

CORRUPTIONS = ("corrupted", "zero", "mean", "mean_all")
# Keys that change how a run is carried out but not what it computes.
_NOT_HASHED = ("progress", "debug", "device")


class ConfigError(ValueError):
    """A config value that is wrong before anything is loaded."""


def _choice(kind: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {kind} {value!r}; choose one of {', '.join(sorted(valid))}")


def _positive_number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


def validate(cfg: DictConfig) -> None:
    """Check every config value before any model is loaded."""
    _choice("task", cfg.task.name, TASKS)
    _choice("method", cfg.method.name, METHODS)
    _choice("corruption", cfg.corruption.name, CORRUPTIONS)
    _choice("graph", cfg.graph.granularity, GRANULARITIES)
    if cfg.method.name == "acdc":
        _positive_number("tau", cfg.tau)  # tau <= 0 would keep removing edges that hurt
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed must be an integer, got {cfg.seed!r}")


def config_hash(cfg: DictConfig) -> str:
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain = {k: v for k, v in plain.items() if k not in _NOT_HASHED and k != "hydra"}
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _task_params(cfg: DictConfig) -> dict:
    params = {k: v for k, v in OmegaConf.to_container(cfg.task, resolve=True).items() if k not in ("name", "tau")}
    return dict(params, seed=cfg.seed, device=cfg.device, model=OmegaConf.to_container(cfg.model, resolve=True))


def _method_params(cfg: DictConfig) -> dict:
    params = {k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items() if k != "name"}
    return dict(params, tau=cfg.tau, seed=cfg.seed)


def run(cfg: DictConfig, folder: Path) -> dict:
    """Run the configured method and write the run folder; returns the summary."""
    validate(cfg)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    seed_everything(cfg.seed)

    task = build_task(cfg.task.name, **_task_params(cfg))
    graph = Graph(Architecture.from_config(task.model.cfg, split_embed=task.split_embed), cfg.graph.granularity)
    problem = Problem(task, graph, cfg.corruption.name, task.metric(cfg.metric), progress=cfg.progress)
    result = get_method(cfg.method.name)(problem, **_method_params(cfg))

    canonical = canonical_mask(task, graph)
    rates = edge_and_node_rates(result.kept, canonical) if canonical is not None else dict.fromkeys(
        ("edge_tpr", "edge_fpr", "node_tpr", "node_fpr"), None)
    nothing = EdgeMask(graph, torch.zeros(graph.n_edges))
    metrics = {
        split: dict(
            metric_full=problem.evaluate(graph.full_mask(), split),
            metric_circuit=problem.evaluate(result.kept, split),
            metric_empty=problem.evaluate(nothing, split),
        )
        for split in ("validation", "test")
    }
    n_forward = sum(engine.n_forward for engine in problem._engines.values())

    write_edges(folder, result, canonical)
    write_trace(folder, result.extras.get("trace", []))
    summary = dict(
        task=task.name,
        method=cfg.method.name,
        corruption=cfg.corruption.name,
        graph=graph.granularity,
        model=task.model.cfg.model_name,
        metric=problem.metric.name,
        tau=cfg.tau if cfg.method.name == "acdc" else None,
        seed=cfg.seed,
        n_edges_total=graph.n_edges,
        n_edges_kept=result.kept.n_kept,
        **metrics["validation"],
        test=metrics["test"],
        **rates,
        n_forward=n_forward,
        n_edge_tests=result.extras.get("n_edge_tests"),
        wall_s=round(time.time() - started, 3),
        device=str(cfg.device),
        config_hash=config_hash(cfg),
        circuitfind_version=__version__,
        complete=True,
    )
    write_summary(folder, summary)  # last: its presence marks the run complete
    return summary
