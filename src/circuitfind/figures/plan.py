"""What a figure needs: its figure spec (``figure_specs/<name>.yaml``: tasks, methods, ablations,
metrics, and per preset each method's sweep) and the plan of sweeps that fills it.

A figure spec is not a ``circuitfind`` run option: a figure is a set of sweeps, not one run's
settings (those are the ``experiment=`` overlays in ``configs/experiment/``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..runs.validate import compose_config  # torch-free: a figure is planned without torch
from .sweeps import Sweep, swept

FIGURES = ("fig3", "fig4", "tables", "tracr_suite")
PRESETS = ("quick", "paper")


class FigureError(ValueError):
    """A problem with the figure spec or the runs that stops the figure (one line)."""


# ---- figure specs -----------------------------------------------------------------------------------
def figure_spec_path(name: str) -> Path:
    """The packaged figure spec ``name`` (``figure_specs/<name>.yaml``).  Not a Hydra config group:
    a figure is a set of sweeps, not one run's settings (those are ``experiment=`` overlays)."""
    return Path(str(files("circuitfind.figure_specs") / f"{name}.yaml"))


def load_figure_spec(source: str | Path) -> DictConfig:
    """A figure spec by name (fig3, fig4, tables, tracr_suite) or path."""
    path = Path(source) if str(source).endswith(".yaml") else figure_spec_path(str(source))
    if not path.is_file():
        raise FigureError(f"no figure spec {path}")
    spec = OmegaConf.load(path)
    for key in ("name", "figure", "tasks", "methods", "corruptions", "metrics", "presets"):
        if key not in spec:
            raise FigureError(f"{path}: missing key {key!r}")
    return spec


def task_metrics(spec: DictConfig, task: str) -> dict[str, str]:
    """The metric of each column of ``task`` (a figure has one, ``metric``; the tables have ``kl``
    and ``task``), leaving out columns the task has no metric for."""
    if task not in spec.metrics:
        raise FigureError(f"figure {spec.name} names no metric for task {task} (add it under `metrics`)")
    metrics = spec.metrics[task]
    if isinstance(metrics, str):
        return {"metric": metrics}
    return {kind: name for kind, name in metrics.items() if name is not None}


# ---- the circuitfind config, composed without running it --------------------------------------------
@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple[str, ...]) -> DictConfig:
    return compose_config(*overrides, return_hydra_config=True)


def paper_values(task: str, method: str) -> list[float]:
    """The values ``threshold=paper`` sweeps for this task and method (configs/threshold/)."""
    sweep = swept(method)
    parameter = sweep.key
    cfg = _composed((f"task={task}", f"method={method}", "threshold=paper"))
    if sweep.needs_task_values and OmegaConf.select(cfg, f"task.sweeps.{method}") is None:
        raise FigureError(f"task {task} has no paper {parameter} sweep (task.sweeps.{method}); "
                          "give `values` in the figure spec")
    return [float(v) for v in str(cfg.hydra.sweeper.params[parameter]).split(",")]


def model_unavailable(task: str, overrides: tuple[str, ...] = ()) -> str | None:
    """Why the model of ``task`` cannot be loaded here (its weights neither cached nor downloadable),
    or None.  Answers None where it cannot tell: the run itself then says what is missing."""
    model = OmegaConf.to_container(_composed((f"task={task}", *overrides)).model, resolve=True)
    if model.get("kind") != "hub" or not model.get("pretrained", True):
        return None  # shipped, compiled or random weights: always at hand
    try:
        from ..models import hub, loading

        if loading.cached_weights(model["repo"]) is not None or hub.hub_reachable():
            return None
        return (f"the weights of {model['repo']} are not in the Hugging Face cache ({hub.hub_cache_dir()}) "
                "and the hub cannot be reached")
    except Exception:  # noqa: BLE001 - the probe must never stop a figure: let the run decide
        return None


# ---- what a figure needs ---------------------------------------------------------------------------
@dataclass
class Plan:
    spec: DictConfig
    preset: str
    tasks: list[str]
    corruptions: list[str]
    sweeps: list[Sweep]
    skipped: dict[str, str]  # task -> why it is left out


def _method_sweep(spec: DictConfig, preset: str, task: str, method: str) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """(values, overrides) of one method's sweep on ``task`` under ``preset``."""
    settings = OmegaConf.select(spec, f"presets.{preset}.{method}", default=None)
    if settings is None:
        raise FigureError(f"figure {spec.name} preset {preset} has no settings for method {method}")
    task_settings = OmegaConf.select(spec, f"presets.{preset}.per_task.{task}.{method}", default=None)
    if task_settings is not None:  # a task may need its own values (no paper list, another scale)
        settings = OmegaConf.merge(settings, task_settings)
    overrides = tuple(str(o) for o in settings.get("overrides", []))
    if swept(method) is None:
        return (), overrides
    values = settings.get("values")
    if values == "paper":
        return tuple(paper_values(task, method)), overrides
    if not isinstance(values, (list, ListConfig)) or not values:
        raise FigureError(f"figure {spec.name} preset {preset}: {method} needs `values` (a list, or paper)")
    return tuple(float(v) for v in values), overrides


def plan(spec: DictConfig, preset: str | None = None, tasks: list[str] | None = None,
         corruption: str | None = None, runs: Path = Path("outputs/figures/runs"),
         extra: tuple[str, ...] = ()) -> Plan:
    """The sweeps a figure needs.  Tasks named in ``tasks`` always run; by default the figure's
    tasks whose model is unavailable are skipped, with the reason."""
    preset = preset or spec.get("preset", "quick")
    if preset not in spec.presets:
        raise FigureError(f"figure {spec.name} has no preset {preset!r}; choose one of {', '.join(spec.presets)}")
    chosen = list(tasks) if tasks else list(spec.tasks)
    corruptions = [corruption] if corruption else list(spec.corruptions)
    skipped: dict[str, str] = {}
    sweeps = []
    for task in chosen:
        metrics = task_metrics(spec, task)
        if not tasks:
            reason = model_unavailable(task, extra)
            if reason:
                skipped[task] = reason
                continue
        try:
            methods = {m: _method_sweep(spec, preset, task, m) for m in spec.methods}
        except FigureError as error:
            if tasks:
                raise
            skipped[task] = str(error)
            continue
        # Settings of every run of this task (tracr_suite: the paper tasks' program-derived truth).
        task_extra = tuple(str(o) for o in OmegaConf.select(spec, f"task_overrides.{task}", default=None) or ())
        for method, (values, overrides) in methods.items():
            for metric in dict.fromkeys(metrics.values()):
                for corr in corruptions:
                    sweeps.append(Sweep(task, method, corr, metric, values, overrides + task_extra + tuple(extra),
                                        Path(runs)))
    return Plan(spec, preset, [t for t in chosen if t not in skipped], corruptions, sweeps, skipped)
