"""The two tracr tasks: compiled RASP programs whose circuit is known exactly (ACDC paper, Fig. 21)."""

from __future__ import annotations

import itertools

import torch

from ..core.graph import Graph
from ..core.metrics import KL, L2
from ..models.tracr import load_tracr_model
from .base import Task, TaskData


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation with no fixed point: each corrupted row comes from another prompt."""
    if n < 2:
        raise ValueError("a derangement needs at least two rows")
    while True:
        perm = torch.randperm(n, generator=generator)
        if not (perm == torch.arange(n)).any():
            return perm


def _split(tokens: torch.Tensor, generator: torch.Generator) -> TaskData:
    batch, seq_len = tokens.shape
    positions = torch.arange(1, seq_len).expand(batch, -1)  # every position but the first (BOS)
    return TaskData(clean=tokens, corrupted=tokens[derangement(batch, generator)], positions=positions.clone())


def reverse_canonical(graph: Graph) -> set[str]:
    return {
        "a3.h0->resid_post",
        "a3.h0<q>", "a3.h0<k>", "a3.h0<v>",
        "m2->a3.h0<q>", "pos_embed->a3.h0<k>", "tok_embed->a3.h0<v>",
        "m1->m2",
        "m0->m1", "tok_embed->m1", "pos_embed->m1",
        "a0.h0->m0", "tok_embed->m0",
        "a0.h0<v>", "tok_embed->a0.h0<v>",
    }


def proportion_canonical(graph: Graph) -> set[str]:
    return {
        "a1.h0->resid_post",
        "a1.h0<q>", "a1.h0<k>", "a1.h0<v>",
        "tok_embed->a1.h0<q>", "pos_embed->a1.h0<q>",
        "tok_embed->a1.h0<k>", "pos_embed->a1.h0<k>",
        "m0->a1.h0<v>",
        "tok_embed->m0",
    }


GROUND_TRUTHS = ("paper", "program")


def _ground_truth(task: str, ground_truth: str, paper, model):
    """``paper``: the reference's circuit (an ACDC run's output); ``program``: derived from the
    compiled weights (tracr_circuits).  README, "Program-derived circuits", compares the two."""
    if ground_truth == "paper":
        return paper
    from .tracr_suite import program_canonical

    return program_canonical(model)


def _check_ground_truth(task: str, ground_truth: str) -> None:
    if ground_truth not in GROUND_TRUTHS:
        raise ValueError(f"unknown ground_truth {ground_truth!r} for task {task}; choose one of "
                         f"{', '.join(GROUND_TRUTHS)}")


def _check_model(task: str, model: dict | None) -> None:
    if model is not None and model.get("name") != task:
        raise ValueError(f"task {task} runs on its own compiled model (model={task}), not model={model.get('name')}")


def tracr_reverse(seed: int = 0, device="cpu", model: dict | None = None, ground_truth: str = "paper",
                  **_) -> Task:
    """BOS followed by each of the 6 permutations of (1, 2, 3); corrupted: the rows deranged.
    There are only six prompts, so validation and test are the same set (as in the paper)."""
    _check_model("tracr_reverse", model)
    _check_ground_truth("tracr_reverse", ground_truth)
    tracr = load_tracr_model("tracr_reverse", device=device)
    rows = [list(map(str, p)) for p in itertools.permutations((1, 2, 3))]
    generator = torch.Generator().manual_seed(seed)
    data = _split(tracr.encode(rows), generator).to(device)
    return Task("tracr_reverse", tracr.model, validation=data, test=data,
                metrics={"kl": KL, "l2": L2}, default_metric="kl", split_embed=True,
                ground_truth_edges=_ground_truth("tracr_reverse", ground_truth, reverse_canonical, tracr.model))


PROPORTION_DATA = ("paper", "valid")
PAPER_ROWS = 4 ** 4  # every length-4 row of token ids 0-3


def tracr_proportion(seed: int = 0, n_prompts: int = 50, data: str = "paper", device="cpu",
                     model: dict | None = None, ground_truth: str = "paper", **_) -> Task:
    """Length-4 prompts for make_frac_prevs(tokens == "x"); corrupted: the rows deranged.  The
    output is a number (the running fraction of "x"), so the metric is the l2 distance at
    positions 1-3.

    ``data="paper"``: the ACDC reference's prompts, against which its ground-truth circuit was
    recorded (an ACDC run): the 4^4 rows of token ids 0-3, shuffled, first ``n_prompts`` for
    validation, the next for test.  The compiled encoder maps those ids to BOS, pad, w and x, so
    the prompts hold BOS and pad tokens anywhere and no leading BOS.  ``data="valid"``: BOS then
    random strings over {w, x, y, z}, the inputs the program is defined on.  There every query
    matches its own position, so the BOS default read through tok_embed -> a1.h0<q>/<k> never
    changes the output: those two canonical edges have no effect, and no method can find them."""
    _check_model("tracr_proportion", model)
    _check_ground_truth("tracr_proportion", ground_truth)
    if data not in PROPORTION_DATA:
        raise ValueError(f"unknown tracr_proportion data {data!r}; choose one of {', '.join(PROPORTION_DATA)}")
    if data == "paper" and not 2 <= n_prompts <= PAPER_ROWS // 2:
        raise ValueError(f"data=paper draws validation and test from {PAPER_ROWS} rows: n_prompts must lie "
                         f"in 2..{PAPER_ROWS // 2}, got {n_prompts}")
    tracr = load_tracr_model("tracr_proportion", device=device)
    generator = torch.Generator().manual_seed(seed)
    if data == "paper":
        rows = torch.tensor(list(itertools.product(range(4), repeat=4)))
        rows = rows[torch.randperm(PAPER_ROWS, generator=generator)]
        validation, test = (_split(part, generator).to(device) for part in (rows[:n_prompts], rows[n_prompts:2 * n_prompts]))
    else:
        def draw() -> TaskData:
            letters = torch.randint(0, 4, (n_prompts, 4), generator=generator)
            return _split(tracr.encode([["wxyz"[i] for i in row] for row in letters.tolist()]), generator).to(device)

        validation, test = draw(), draw()
    return Task("tracr_proportion", tracr.model, validation=validation, test=test,
                metrics={"l2": L2}, default_metric="l2", split_embed=True,
                ground_truth_edges=_ground_truth("tracr_proportion", ground_truth, proportion_canonical,
                                              tracr.model))
