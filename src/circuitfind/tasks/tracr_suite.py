"""The tracr suite: compiled RASP programs whose ground-truth circuits come from their weights.

Each program (``scripts/compile_tracr.py`` compiles it; ``models/weights/<name>.pt`` ships it) is a
task on the inputs it is defined on: BOS, then ``length`` tokens of its vocabulary (sort_unique:
distinct tokens), drawn with a seeded generator and balanced over the program's answers,
``n_prompts`` for validation and as many for test.
A corrupted prompt is another prompt of the same split on which the program's answer differs at
some position (the compiled model is exact on its inputs, checked at compile time, so its own
decoded output is the program's answer).  The metrics read every position but BOS: KL for a
categorical output, l2 for a numerical one.

The ground-truth circuit is derived from the compiled weights (``circuitfind.tasks.tracr_circuits``), not
from any discovery run.
"""

from __future__ import annotations

import functools
import itertools

import torch

from ..core.graph import Graph
from ..core.metrics import KL, L2
from ..models.tracr import TracrModel, load_tracr_model
from .tracr_circuits import derive_canonical
from .base import Task, TaskData

# program -> what it computes (the task configs say the same in words).
SUITE: dict[str, str] = {
    "tracr_sort_unique": "sort distinct tokens 1-5 (tracr lib make_sort_unique)",
    "tracr_sort": "sort tokens 1-4 with repeats, ties by position (make_sort)",
    "tracr_hist": "each token's count in the row, over {a, b, c} (make_hist)",
    "tracr_pair_balance": "frac_prevs('(') - frac_prevs(')') (make_pair_balance): numerical",
    "tracr_shuffle_dyck": "is the row a balanced shuffle of '()' (make_shuffle_dyck)",
    "tracr_shuffle_dyck2": "is the row a balanced shuffle of '()' and '{}' (make_shuffle_dyck2)",
    "tracr_token_plus_index": "(token + index) mod 3 over {0, 1, 2}: a SequenceMap of two inputs",
    "tracr_frac_prevs_a": "running fraction of 'a' over {a, b, c} (make_frac_prevs): numerical",
}


def program_canonical(model) -> "functools.partial[set[str]]":
    """The ground-truth circuit of a compiled program, as a task's ``ground_truth_edges``."""
    return functools.partial(_derive_on, model)


def _derive_on(model, graph: Graph) -> set[str]:
    return derive_canonical(model, graph)


def every_row(tracr: TracrModel, length: int) -> list[tuple[str, ...]]:
    """Every input of ``length`` tokens the program is defined on (at most 4^5 here)."""
    vocab = [t for t in tracr.input_vocab if t not in (tracr.bos, tracr.pad)]
    rows = itertools.product(vocab, repeat=length)
    return [row for row in rows if not tracr.distinct_tokens or len(set(row)) == len(row)]


def draw_rows(tracr: TracrModel, n: int, length: int, generator: torch.Generator) -> list[tuple[str, ...]]:
    """``n`` seeded rows, balanced over the program's answers: answers are visited in random order,
    a random row of each, round after round.  Uniform rows would make some tasks nearly constant
    (few random rows are balanced shuffle-Dyck strings), leaving no corrupted prompt to change them."""
    rows = every_row(tracr, length)
    by_answer: dict[tuple, list[tuple[str, ...]]] = {}
    outputs = tracr.decode(tracr.model(tracr.encode(rows)))
    for row, answer in zip(rows, outputs):
        key = tuple(round(v, 4) if isinstance(v, float) else v for v in answer)
        by_answer.setdefault(key, []).append(row)
    groups = list(by_answer.values())
    drawn: list[tuple[str, ...]] = []
    while len(drawn) < n:
        for g in torch.randperm(len(groups), generator=generator).tolist():
            group = groups[g]
            drawn.append(group[int(torch.randint(len(group), (1,), generator=generator))])
            if len(drawn) == n:
                break
    return drawn


def answers_differ(tracr: TracrModel, clean: torch.Tensor) -> torch.Tensor:
    """[n, n] bool: True where prompt j's answer differs from prompt i's at some position."""
    logits = tracr.model(clean)[:, 1:]
    if tracr.output_vocab is None:
        values = logits[..., 0]
        return ((values[:, None] - values[None, :]).abs() > 1e-4).any(-1)
    ids = logits.argmax(-1)
    return (ids[:, None] != ids[None, :]).any(-1)


def corrupt(tracr: TracrModel, clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each prompt, a random other prompt of the split whose answer differs."""
    differ = answers_differ(tracr, clean)
    picks = []
    for i, row in enumerate(differ):
        candidates = torch.nonzero(row).flatten()
        if len(candidates) == 0:
            raise ValueError(f"prompt {i} has the same answer as every other prompt: no corrupted prompt "
                             "changes it (use more prompts or a longer length)")
        picks.append(int(candidates[torch.randint(len(candidates), (1,), generator=generator)]))
    return clean[torch.tensor(picks, device=clean.device)]


def make_split(tracr: TracrModel, n: int, length: int, generator: torch.Generator) -> TaskData:
    clean = tracr.encode(draw_rows(tracr, n, length, generator))
    positions = torch.arange(1, length + 1, device=clean.device).expand(n, -1).clone()
    return TaskData(clean=clean, corrupted=corrupt(tracr, clean, generator), positions=positions)


def check_params(name: str, n_prompts: int, length: int, ground_truth: str) -> None:
    if name not in SUITE:
        raise ValueError(f"unknown tracr suite program {name!r}; choose one of {', '.join(SUITE)}")
    if not isinstance(n_prompts, int) or n_prompts < 2:
        raise ValueError(f"n_prompts must be an integer of at least 2, got {n_prompts!r}")
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive integer, got {length!r}")
    if ground_truth != "program":
        raise ValueError(f"task {name} has only the program-derived ground truth (ground_truth=program), "
                         f"got {ground_truth!r}")


def suite_task(name: str, seed: int = 0, n_prompts: int = 50, length: int = 4, ground_truth: str = "program",
               device="cpu", model: dict | None = None, **_) -> Task:
    """Task ``name`` of the suite (see the module doc)."""
    check_params(name, n_prompts, length, ground_truth)
    if model is not None and model.get("name") != name:
        raise ValueError(f"task {name} runs on its own compiled model, not model={model.get('name')}")
    tracr = load_tracr_model(name, device=device)
    if length > tracr.max_seq_len:
        raise ValueError(f"{name} is compiled for at most {tracr.max_seq_len} tokens after BOS, got length={length}")
    generator = torch.Generator().manual_seed(seed)
    validation, test = (make_split(tracr, n_prompts, length, generator) for _ in range(2))
    numerical = tracr.output_vocab is None
    metrics = {"l2": L2} if numerical else {"kl": KL, "l2": L2}
    return Task(name, tracr.model, validation=validation, test=test, metrics=metrics,
                default_metric="l2" if numerical else "kl", split_embed=True,
                ground_truth_edges=program_canonical(tracr.model))


SUITE_TASKS = {name: functools.partial(suite_task, name) for name in SUITE}
