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

from .. import __version__
from ..core.faithfulness import areas, describe as describe_faithfulness, faithfulness, full_model_metric
from ..evaluation.rates import edge_and_node_rates
from ..tasks.ground_truth import ground_truth_mask
from .circuit_json import ground_truth
from ..core.graph import GRANULARITIES, Architecture, EdgeMask, Graph
from ..methods.result import MethodResult
from ..methods import Problem
from ..methods.spec import get_spec, load_specs
from ..core.checkpoint import Checkpointer, RunInterrupted
from ..core.signals import Interrupted, signal_name, signals_raise
from ..plots.circuit import circuit_dot, draw_circuit
from .finished import result_from_state, result_state
from .phases import Phases
from ..core.files import atomic_write_text
from .rundir import (CURVE, SUMMARY, config_hash, copy_run, folder_state, publish_run,
                     read_summary, store_folder, write_result, write_summary)
from ..tasks.registry import TASKS, build_task
from .threads import torch_threads
from .validate import GROUND_TRUTH_WORDS, ConfigError, check_config, compose_config, ground_truth_path

log = logging.getLogger("circuitfind")
CORRUPTIONS = ("corrupted", "zero", "mean", "mean_all")
__all__ = ["ConfigError", "compose_config", "run", "validate"]


def _choice(kind: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {kind} {value!r}; choose one of {', '.join(sorted(valid))}")


def validate(cfg: DictConfig):
    """Check every config value before any model is loaded: the torch-free checks the CLI ran
    already (``validate.check_config``, not repeated), then the registries a config file could name
    wrongly.  Returns the method's typed parameters."""
    params = check_config(cfg)
    _choice("task", cfg.task.name, TASKS)
    _choice("method", cfg.method.name, load_specs())
    _choice("corruption", cfg.corruption.name, CORRUPTIONS)
    _choice("graph", cfg.graph.granularity, GRANULARITIES)
    return params


def build_problem(cfg: DictConfig) -> Problem:
    """The task, model, graph and metric a config names, bundled for a method."""
    task = build_task(cfg.task.name, **_task_params(cfg))
    circuit_file = ground_truth_path(cfg)
    if circuit_file is not None:  # a circuit file replaces the task's own ground-truth circuit
        task.ground_truth_edges = ground_truth(circuit_file)
    graph = Graph(Architecture.from_config(task.model.cfg, split_embed=task.split_embed), cfg.graph.granularity)
    return Problem(task, graph, cfg.corruption.name, task.metric(cfg.metric), progress=cfg.progress,
                   shuffle_positions=OmegaConf.select(cfg, "corruption.shuffle_positions", default=False),
                   activation_device=OmegaConf.select(cfg, "model.activation_device", default="auto"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _task_params(cfg: DictConfig) -> dict:
    params = {k: v for k, v in OmegaConf.to_container(cfg.task, resolve=True).items()
              if k not in ("name", "tau", "sweeps", "ground_truth")}
    if OmegaConf.select(cfg, "task.ground_truth") in GROUND_TRUTH_WORDS:  # the tracr tasks' own choice
        params["ground_truth"] = cfg.task.ground_truth
    return dict(params, seed=cfg.seed, device=cfg.device, model=OmegaConf.to_container(cfg.model, resolve=True))


def _rates(found: EdgeMask, canonical: EdgeMask | None) -> dict:
    """Edge and node TPR/FPR against the ground-truth circuit (None where the task has none)."""
    if canonical is None:
        return dict.fromkeys(("edge_tpr", "edge_fpr", "node_tpr", "node_fpr"), None)
    return edge_and_node_rates(found, canonical)


ROC_CUTS = 500  # a ranking's ROC: at most this many of its cuts (every cut up to that many)


def _evaluate_curve(problem: Problem, canonical: EdgeMask | None, result: MethodResult) -> list[dict]:
    """One row per circuit of a method that yields a whole curve from one run.

    A ranking (EAP, EAP-IG, HISP): its circuits at MIB's fractions with their metric and
    faithfulness on the test split (one forward per distinct circuit, here or, under k=auto,
    already in the method; the empty and the full one are known) and on the validation split
    where k=auto measured them, the circuits k=auto bisected with, and their rates; where the task
    has a ground truth, also one row per cut between tie groups (rates only, no forward: the ROC),
    at most ``ROC_CUTS`` evenly spaced cuts.  Any other
    curve: every point with its rates and its test metric."""
    ranking = result.ranking
    if ranking is None:
        rows = []
        for point in tqdm(result.curve, desc="curve", unit="circuit", disable=not problem.progress, leave=False):
            rows.append(dict(parameter=point.parameter, n_edges=point.circuit.n_kept,
                             **_rates(point.circuit, canonical),
                             metric_test=problem.evaluate(point.circuit, "test"), removed=point.removed))
        return rows
    from ..methods.ranking import CircuitEvaluator

    started = time.perf_counter()
    test = CircuitEvaluator(problem, "test")
    pruned = bool((result.details or {}).get("pruned", True))
    rows = []
    for p in tqdm(result.curve, desc="curve", unit="circuit", disable=not problem.progress, leave=False):
        metric_test, f_test = (p.metric_test, p.faithfulness_test) if p.metric_test is not None else \
            test.faithfulness(p.circuit.kept) if p.fraction is not None else (None, None)
        rows.append(dict(parameter=p.parameter, n_edges=p.circuit.n_kept, n_edges_unpruned=p.n_unpruned,
                         fraction=p.fraction, **_rates(p.circuit, canonical), metric_validation=p.metric,
                         faithfulness_validation=p.faithfulness, metric_test=metric_test, faithfulness_test=f_test,
                         removed=p.removed))
    curve_test_s = round(time.perf_counter() - started, 3)
    if canonical is not None:
        last = ranking.n_cuts - 1
        cuts = range(ranking.n_cuts) if ranking.n_cuts <= ROC_CUTS else \
            sorted({round(last * i / (ROC_CUTS - 1)) for i in range(ROC_CUTS)})
        for cut in tqdm(cuts, desc="roc", unit="cut", disable=not problem.progress, leave=False):
            circuit = EdgeMask(problem.graph, ranking.circuit(cut, pruned))
            rows.append(dict(parameter=circuit.n_kept, n_edges=circuit.n_kept, n_edges_unpruned=ranking.sizes[cut],
                             fraction=None, **_rates(circuit, canonical), metric_validation=None,
                             faithfulness_validation=None, metric_test=None, faithfulness_test=None,
                             removed=ranking.added[cut]))
    if result.details is not None:  # added to the method's own (k=auto measures the test curve first)
        result.details.update(
            curve_test_forwards=result.details.get("curve_test_forwards", 0) + test.n_forwards,
            curve_test_s=round(result.details.get("curve_test_s", 0.0) + curve_test_s, 3))
    return rows


def _faithfulness_summary(problem: Problem, result: MethodResult, metrics: dict, curve: list[dict] | None) -> dict:
    """The circuit's faithfulness on each split and, for a ranking, its curve's CPR and CMD (test split)."""
    out = dict(metric=problem.metric.name, formula=describe_faithfulness(problem.metric.name))
    for split, values in metrics.items():
        m_full = full_model_metric(problem.metric.name, values["metric_full"])
        out[split] = faithfulness(values["metric_circuit"], values["metric_empty"], m_full)
    if result.ranking is not None and curve:
        points = [row for row in curve if row.get("fraction") is not None]
        area = areas([row["fraction"] for row in points], [row["faithfulness_test"] for row in points])
        out["curve"] = dict(split="test", fractions=[row["fraction"] for row in points],
                            n_edges=[row["n_edges"] for row in points],
                            faithfulness=[row["faithfulness_test"] for row in points], cpr=area.cpr, cmd=area.cmd,
                            pruned=bool((result.details or {}).get("pruned", True)))
    return out


def run(cfg: DictConfig, folder: Path) -> dict:
    """Run the configured method and write the run folder; returns the summary.

    A folder is keyed by its config: one holding a complete run of this config is reused as it is
    (``force=true`` recomputes it), one holding a checkpoint of it resumes (``resume=false`` starts
    over), and one holding another config's results is refused, never overwritten.

    SIGINT (Ctrl-C) or SIGTERM at any phase raises ``RunInterrupted`` with one line that says what
    was kept: a checkpointing method's last checkpoint, or the method's finished result when the
    stop came after it (the next run evaluates that result rather than running the method again);
    ``summary.json`` is never written by an interrupted run."""
    params = validate(cfg)
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
    checkpointer.read()  # an unreadable checkpoint is refused now, before the model loads

    phases = Phases(progress=cfg.progress)
    finished: list[MethodResult] = []  # the method's result, once it has one
    try:
        with signals_raise():
            with phases("model", f"building the {cfg.task.name} task and its {cfg.model.name} model"):
                problem = build_problem(cfg)
            with torch_threads(cfg.get("threads", "auto"), problem) as threads:
                result = _search(cfg, problem, params, checkpointer, phases)
                finished.append(result)
                if checkpointer.stop_signal is not None:  # the signal came after the method's last step
                    raise Interrupted(checkpointer.stop_signal)
                summary = write_run_folder(folder, problem, result, method=cfg.method.name,
                                           seed=cfg.seed, device=cfg.device, identity=identity, started=started,
                                           phases=phases, threads=threads, data=OmegaConf.select(cfg, "task.data"),
                                           draw=cfg.get("draw", "auto"), resumed=_resumed(checkpointer))
    except (KeyboardInterrupt, RunInterrupted) as stop:
        raise _interrupted(stop, cfg.method.name, checkpointer, phases, finished) from None
    checkpointer.clear()
    if store_run is not None:
        publish_run(folder, store_run, identity)
    return summary


def _resumed(checkpointer: Checkpointer) -> dict:
    """What this run owes to earlier, interrupted runs of its config: the step it resumed from
    (None: it started fresh) and their method's seconds."""
    return dict(resumed_from=checkpointer.resumed_from, earlier_method_s=checkpointer.earlier_method_s)


def _interrupted(stop: BaseException, method: str, checkpointer: Checkpointer, phases: Phases,
                 finished: list[MethodResult]) -> RunInterrupted:
    """The one line an interrupted run ends with, after keeping what it finished."""
    name = signal_name(stop) if isinstance(stop, KeyboardInterrupt) else stop.signal_name
    folder = checkpointer.folder
    if isinstance(stop, RunInterrupted):  # the method stopped at a step and saved it
        return RunInterrupted(folder, name, stop.steps,
                              f"interrupted by {name} after {stop.steps} steps of {method}; checkpoint saved in {folder}")
    doing = phases.stopped_in[1] if phases.stopped_in else "between phases"
    state = result_state(finished[0]) if finished and not checkpointer.resumed_finished else None
    if state is not None:
        checkpointer.save(state, finished=True)
    if finished and (state is not None or checkpointer.resumed_finished):
        return RunInterrupted(folder, name, checkpointer.steps,
                              f"interrupted by {name} while {doing}; {method}'s finished result is saved in "
                              f"{checkpointer.path}, and the next run evaluates it")
    if checkpointer.saved_steps is not None:
        return RunInterrupted(folder, name, checkpointer.saved_steps,
                              f"interrupted by {name} while {doing}; the checkpoint of step "
                              f"{checkpointer.saved_steps} stays in {checkpointer.path}")
    if finished:  # a ranking method's result holds its ranking, which a checkpoint cannot: seconds of work
        return RunInterrupted(folder, name, 0, f"interrupted by {name} while {doing}; {method}'s scores are not "
                              "kept (seconds of work): the next run computes them again", resumable=False)
    return RunInterrupted(folder, name, 0, f"interrupted by {name} while {doing}; nothing was finished to keep",
                          resumable=False)


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


def _search(cfg: DictConfig, problem: Problem, checked, checkpointer: Checkpointer, phases: Phases) -> MethodResult:
    """The engine's caches, then the configured method (checkpointed where it can be), or the
    method's result that an interrupted run of this config finished.  ``checked``: the method's typed
    parameters (``validate``)."""
    with phases("caches", "running the unpatched and ablated models once (the engine's caches)"):
        problem.clean_logits("validation")  # builds the engine (the ablated run), then the unpatched run
    saved = checkpointer.finished()
    if saved is not None:
        return result_from_state(problem.graph, saved)
    spec = get_spec(cfg.method.name)
    params = dataclasses.asdict(checked)
    if not spec.checkpoints:  # a signal stops it at once (the pipeline keeps nothing of it)
        with phases("method", f"running {cfg.method.name}"), checkpointer.timing():
            return spec.function()(problem, **params)
    params["checkpointer"] = checkpointer
    with phases("method", f"running {cfg.method.name}"), checkpointer.timing(), checkpointer.stop_on_signals():
        return spec.function()(problem, **params)


def write_run_folder(folder: Path, problem: Problem, result: MethodResult, *, method: str,
                     seed: int, device, identity: str | None, started: float, phases: Phases | None = None,
                     threads: dict | None = None, data: str | None = None, draw: bool | str = "auto",
                     resumed: dict | None = None) -> dict:
    """Evaluate ``result`` (metrics on both splits, rates against the ground-truth circuit, a method's
    curve) and write every file of the run folder, ``summary.json`` last; returns the summary.
    The CLI and the Python API (``circuitfind.api``) both finish a run here.  ``phases``: the run's
    timings so far (this adds evaluation, writing and drawing); ``threads``, ``data`` (the prompt
    set) and ``resumed`` (``resumed_from``, ``method_total_s``) are recorded as given."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    phases = phases if phases is not None else Phases(progress=problem.progress)
    task, graph = problem.task, problem.graph
    with phases("evaluation", "evaluating the circuit on the validation and test prompts"):
        canonical = ground_truth_mask(task, graph)
        rates = _rates(result.circuit, canonical)
        curve = _evaluate_curve(problem, canonical, result) if result.curve is not None else None
        metrics = _split_metrics(problem, result.circuit, _measured(result, curve))
    n_forward = problem.n_forward
    spec = get_spec(method)

    with phases("writing", "writing the run folder"):
        write_result(folder, result, canonical, curve, d_model=task.model.cfg.d_model)
    with phases("drawing", f"drawing the circuit ({result.circuit.n_kept} of {graph.n_edges} {graph_unit(graph)})"):
        if draw is not False:  # auto: the edges while they stay readable, else the block summary
            draw_circuit(result, folder / "circuit.png", f"{task.name} {method} ({problem.corruption})",
                         detail=None if draw == "auto" else True)
        atomic_write_text(folder / "circuit.dot", circuit_dot(result))
    details = result.details or None
    warnings = [details["warning"]] if isinstance(details, dict) and details.get("warning") else []
    for warning in warnings:
        log.warning(warning)
    log.info("time: %s", phases.line())
    summary = dict(
        task=task.name,
        data=data,  # the prompt set, for tasks that have several
        method=method,
        method_label=result.label or method,  # a variant the report plots apart
        corruption=problem.corruption,
        # the corrupted run's positional embedding at position i came from position order[i] (null: unshuffled)
        position_order=problem.engine("validation").ablation.position_order,
        # where each split's engine kept its stored activations: model (its device) or cpu
        activation_device=dict(setting=problem.activation_device,
                               **problem.activation_devices()),
        graph=graph.granularity,
        model=task.model.cfg.model_name,
        metric=problem.metric.name,
        tau=result.parameter if spec.parameter == "tau" else None,  # ACDC's threshold: its parameter
        parameter_name=spec.parameter,  # what this method's curve varies (tau, lambda_reg, k)
        parameter=result.parameter,
        seed=seed,
        n_edges_total=graph.n_edges,
        n_edges_kept=result.circuit.n_kept,
        **metrics["validation"],
        test=metrics["test"],
        # f = (m(C) - m(empty)) / (m(full) - m(empty)) per split; a ranking's CPR and CMD (MIB)
        faithfulness=_faithfulness_summary(problem, result, metrics, curve),
        **rates,
        n_forward=n_forward,
        n_edge_tests=len(result.trace) if result.trace is not None else None,
        curve=CURVE if curve is not None else None,  # one row per circuit of a one-run curve (HISP)
        method_details=details,
        warnings=warnings,
        threads=threads,
        timings=dict(phases.seconds),  # seconds per phase; wall_s also counts what lies between
        # an interrupted run's resumption: the step it went on from (null: none) and the method's
        # time in all runs of this config (this run's alone is timings.method)
        resumed_from=(resumed or {}).get("resumed_from"),
        method_total_s=_method_total(phases, resumed),
        wall_s=round(time.time() - started, 3),
        device=str(device),
        config_hash=identity,
        circuitfind_version=__version__,
        complete=True,
    )
    write_summary(folder, summary)  # last: its presence marks the run complete
    return summary


def _method_total(phases: Phases, resumed: dict | None) -> float | None:
    """The method's seconds over this run and the interrupted runs it resumed."""
    if "method" not in phases.seconds and not resumed:
        return None
    return round(phases.seconds.get("method", 0.0) + (resumed or {}).get("earlier_method_s", 0.0), 3)


def graph_unit(graph: Graph) -> str:
    """What the graph's "edges" are: on the node graph each one is a whole node."""
    return "nodes" if graph.granularity == "nodes" else "edges"


def _measured(result: MethodResult, curve: list[dict] | None) -> dict[str, float]:
    """The run's own circuit's metric on each split where its curve measured that very circuit:
    k=auto's validation forwards (the points' ``metric``) and the test curve's (a ranking's rows
    follow its points, in order).  ``_split_metrics`` does not run these circuits again."""
    out: dict[str, float] = {}
    if result.ranking is None or not result.curve:
        return out
    chosen = result.circuit.values.float()
    for i, point in enumerate(result.curve):
        if not torch.equal(point.circuit.values.float(), chosen):
            continue
        if point.metric is not None:
            out.setdefault("validation", point.metric)
        if curve is not None and curve[i]["metric_test"] is not None:
            assert curve[i]["n_edges"] == point.circuit.n_kept, "a ranking's curve rows follow its points"
            out.setdefault("test", curve[i]["metric_test"])
    return out


def _split_metrics(problem: Problem, kept: EdgeMask, measured: dict[str, float] | None = None) -> dict:
    """The metric of the full model, the circuit and the empty circuit on each split.  The full
    model's is read off the clean logits every metric compares against (the same forward: nothing
    removed = the model), and so is a circuit that keeps every edge at 1; the empty circuit's
    logits the engine computes from the ablated senders without a forward; the circuit's, where
    ``measured`` (``_measured``) does not have it already, by one forward of its needed nodes
    (``nodes_only``: the full run's numbers to float rounding), with a progress bar (minutes on
    GPT-2 with a CPU)."""
    nothing = EdgeMask(problem.graph, torch.zeros(problem.graph.n_edges))
    measured = measured or {}
    metrics: dict = {split: {"metric_full": float(problem.per_prompt(problem.clean_logits(split), split).mean())}
                     for split in ("validation", "test")}
    whole = bool((kept.values.float() == 1).all())
    for split in tqdm(("validation", "test"), desc="evaluation", unit="split", disable=not problem.progress,
                      leave=False):
        values = metrics[split]
        if split in measured:
            values["metric_circuit"] = measured[split]
        elif whole:
            values["metric_circuit"] = values["metric_full"]
        else:
            values["metric_circuit"] = problem.evaluate(kept, split, nodes_only=True)
        values["metric_empty"] = problem.evaluate(nothing, split)
    return {split: {k: metrics[split][k] for k in ("metric_full", "metric_circuit", "metric_empty")}
            for split in metrics}
