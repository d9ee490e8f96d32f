"""The Python API: your model, your prompts, your metric, any registered method, the CLI's run folder.

    import circuitfind
    task = circuitfind.make_task(model, clean, corrupted, metric="logit_diff",
                                 answers=answer_ids, wrong_answers=wrong_ids)
    circuit = circuitfind.find_circuit(task, "acdc", tau=0.01)
    circuit.kept_edges       # names of the kept edges
    circuit.scores           # {edge name: score}
    circuit.edges            # pandas DataFrame: edge, sender, receiver, score, kept, canonical
    circuit.save("out/run")  # edges.csv, summary.json, circuit.json, circuit.dot, circuit.png, ...

A thin layer over what the command line runs: ``make_task`` builds the same ``Task`` the task
registry does, ``find_circuit`` the same ``Problem``, and ``save`` finishes through the pipeline's
own ``write_run_folder``.  The search and the report both use the one set of prompts given (a
``Task`` built by hand can hold a separate test split).
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from .runs.circuit_json import ground_truth as read_ground_truth
from .core.architecture import check_supported
from .models.view import model_view
from .core.graph import Architecture, Graph
from .methods.result import MethodResult
from .methods import Problem, get_spec
from .core.metrics import Metric
from .tasks.base import Task, TaskData
from .tasks.pairs import ANSWER_METRICS, answer_metrics
from .runs.pipeline import CORRUPTIONS, seed_everything, write_run_folder
from .tasks.text import check_vocabulary

# A model view (models/view): a TransformerLens 3 HookedTransformer, or a TransformerLens 4
# TransformerBridge wrapped as one.
ModelView = object

# A metric on logits: fn(logits) or fn(logits, clean_logits), both [batch, k, vocab] at the metric
# positions (clean: the full model's), returning one value per prompt [batch].  One number for all
# prompts (their mean) is refused: circuitfind takes the mean itself, and HISP needs each prompt's
# value (it averages the size of each prompt's gradient, which a mean would blur into one).
LogitMetric = Callable[..., torch.Tensor]


def make_task(model: ModelView, clean: torch.Tensor, corrupted: torch.Tensor,
              metric: str | LogitMetric | Metric = "kl", positions: torch.Tensor | int | None = None, *,
              answers: Iterable[int] | torch.Tensor | None = None,
              wrong_answers: Iterable[int] | torch.Tensor | None = None, lower_is_better: bool = True,
              split_embed: bool = False, ground_truth: str | Path | Iterable[str] | None = None,
              name: str = "custom") -> Task:
    """A task from a model and token ids [batch, seq] of clean and corrupted prompts.

    ``metric``: ``kl`` (default), ``nll``, ``logit_diff``, ``prob_diff`` (the last three read
    ``answers``, the diffs also ``wrong_answers``: one token id per prompt), or a callable on
    logits (see ``LogitMetric``; ``lower_is_better`` says which way is good), or a ``Metric``.
    ``positions``: where the metric reads the logits: None (each prompt's last token), one int for
    every prompt, or a tensor [batch] or [batch, k].  ``split_embed``: token and positional
    embeddings as two graph nodes (as for tracr models).  ``ground_truth``: a circuit file (see
    ``circuit_json``) or qkv-graph edge names, for TPR/FPR."""
    model = model_view(model)  # a HookedTransformer, or a TransformerBridge wrapped as one
    check_supported(model)
    clean, corrupted = torch.as_tensor(clean), torch.as_tensor(corrupted)
    extras = {key: torch.as_tensor(ids, dtype=torch.long).reshape(-1)
              for key, ids in (("answer", answers), ("wrong_answer", wrong_answers)) if ids is not None}
    for key, ids in extras.items():
        if ids.shape[0] != clean.shape[0]:
            raise ValueError(f"{key}s has {ids.shape[0]} token ids for {clean.shape[0]} prompts")
    data = TaskData(clean, corrupted, _positions(positions, clean), extras)
    check_vocabulary(model, clean, corrupted, *extras.values())
    device = next(model.parameters()).device
    data = data.to(device)
    metrics = answer_metrics("answer" in extras, "wrong_answer" in extras)
    default = _metric(metric, metrics, lower_is_better)
    metrics[default.name] = default
    return Task(name, model, validation=data, test=data, metrics=metrics, default_metric=default.name,
                split_embed=split_embed, ground_truth_edges=_canonical(ground_truth))


def _positions(positions, clean: torch.Tensor) -> torch.Tensor:
    batch, seq = clean.shape
    if positions is None:
        positions = seq - 1
    if isinstance(positions, int):
        return torch.full((batch, 1), positions % seq if positions < 0 else positions, dtype=torch.long)
    positions = torch.as_tensor(positions, dtype=torch.long)
    return positions[:, None] if positions.dim() == 1 else positions


def _metric(metric, available: dict[str, Metric], lower_is_better: bool) -> Metric:
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        if metric not in available:
            needs = "" if metric not in ANSWER_METRICS else " (give answers=, and wrong_answers= for the diffs)"
            raise ValueError(f"no metric {metric!r} for this task{needs}; choose one of {', '.join(available)} "
                             "or pass a callable on logits")
        return available[metric]
    if not callable(metric):
        raise TypeError(f"metric must be a name, a callable on logits or a Metric, not {type(metric).__name__}")
    with_clean = len(inspect.signature(metric).parameters) >= 2

    name = getattr(metric, "__name__", "custom")

    def on_logits(logits, clean_logits, data):
        value = metric(logits, clean_logits) if with_clean else metric(logits)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != (logits.shape[0],):
            got = "one number" if not isinstance(value, torch.Tensor) or value.dim() == 0 else \
                f"shape {tuple(value.shape)}"
            raise ValueError(f"metric {name} returned {got} for {logits.shape[0]} prompts; return one value per "
                             f"prompt (a tensor of shape [{logits.shape[0]}], e.g. without the final .mean()): "
                             "circuitfind averages them itself")
        return value

    return Metric(name, on_logits, lower_is_better=lower_is_better)


def _canonical(ground_truth) -> Callable[[Graph], set[str]] | None:
    if ground_truth is None:
        return None
    if isinstance(ground_truth, (str, Path)):
        return read_ground_truth(ground_truth)
    names = set(ground_truth)
    return lambda graph: names


@dataclass
class Circuit:
    """What ``find_circuit`` found: the method's scores and kept edges on the task's graph."""

    problem: Problem
    result: MethodResult
    method: str
    seed: int
    search_s: float  # wall time of the search
    _summary: dict | None = field(default=None, repr=False)

    @property
    def graph(self) -> Graph:
        return self.problem.graph

    @property
    def kept_edges(self) -> list[str]:
        return self.result.circuit.kept_names()

    @property
    def scores(self) -> dict[str, float]:
        return {e.name: s for e, s in zip(self.graph.edges, self.result.scores.tolist())}

    @property
    def edges(self):
        """Every edge as a pandas DataFrame, the columns of ``edges.csv``."""
        import pandas as pd

        from .tasks.ground_truth import ground_truth_mask

        canonical = ground_truth_mask(self.problem.task, self.graph)
        return pd.DataFrame(dict(
            edge=[e.name for e in self.graph.edges], sender=[e.sender for e in self.graph.edges],
            receiver=[e.receiver for e in self.graph.edges], score=self.result.scores.tolist(),
            kept=self.result.circuit.kept.tolist(),
            canonical=canonical.kept.tolist() if canonical is not None else [None] * self.graph.n_edges))

    def metric(self, split: str = "validation") -> float:
        """The task's metric of the kept circuit (the full model's is ``problem.evaluate(graph.full_mask())``)."""
        return self.problem.evaluate(self.result.circuit, split)

    def save(self, folder: str | Path) -> dict:
        """Write the run folder the CLI writes (``edges.csv``, ``summary.json``, ``circuit.json``,
        ``circuit.dot``, ``circuit.png``, a method's own tables); returns the summary."""
        device = next(self.problem.task.model.parameters()).device
        self._summary = write_run_folder(Path(folder), self.problem, self.result, method=self.method,
                                         seed=self.seed, device=device, identity=None,
                                         started=time.time() - self.search_s)
        return self._summary


def find_circuit(task: Task, method: str = "acdc", *, corruption: str = "corrupted", graph: str = "qkv",
                 tau: float | None = None, seed: int = 0, progress: bool = False, shuffle_positions: bool = False,
                 **params) -> Circuit:
    """Run a registered method (``acdc``, ``sp``, ``hisp``, ``canonical``, ...) on ``task``.

    ``corruption``: what a removed edge carries (``corrupted``: the sender on the corrupted prompts;
    ``zero``; ``mean``/``mean_all``); ``graph``: ``qkv``, ``heads`` or ``nodes``; ``tau``: ACDC's
    threshold, which ACDC needs (no default here: the command line's is each task's own, in
    ``configs/task/``); ``shuffle_positions``: the corrupted run's positional embedding at shuffled positions
    (split-embedding models, as ``corruption.shuffle_positions``); further keyword arguments go to
    the method (``lambda_reg=``, ``epochs=``, ``k=``, ...)."""
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; choose one of {', '.join(CORRUPTIONS)}")
    spec = get_spec(method)
    if "tau" in spec.top_level and tau is None:
        raise ValueError(f"{spec.label} needs tau= (its threshold; e.g. find_circuit(task, {method!r}, tau=0.01))")
    top = dict(seed=seed, **({} if tau is None else dict(tau=tau)))
    checked = dataclasses.asdict(spec.check(params, top))  # the method's typed parameters
    problem = Problem(task, Graph(Architecture.from_config(task.model.cfg, split_embed=task.split_embed), graph),
                      corruption, task.metric(None), progress=progress, shuffle_positions=shuffle_positions)
    seed_everything(seed)
    started = time.time()
    result = spec.function()(problem, **checked)
    return Circuit(problem, result, method, seed, time.time() - started)
