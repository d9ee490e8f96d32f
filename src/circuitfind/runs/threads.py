"""How many CPU threads torch may use for one run (the ``threads`` setting).

Torch starts one intra-op thread per core, and splits an op over them when the op is big enough.
Whether that pays depends on two things, and ``threads=auto`` (the default) looks at both:

- **the work per op**: the size of a forward's largest op, in output elements: the blocks'
  ``prompts x positions x d_model`` activations, or the unembedding's ``prompts x metric positions x
  d_vocab`` logits, whichever is larger.  Below ``SMALL_WORK`` (tracr: a few hundred) each op is
  microseconds of work that more threads only split and synchronise, and the run gets one thread.
  The parameter count says nothing about this, and neither do the blocks alone: a 2-layer GPT-2 of
  width 64 (6.6M parameters, nearly all its vocabulary) runs blocks of a few thousand activations, but
  its unembedding writes 50,257 logits per metric position, which two threads share well (on quiet
  cores: 1.28 s with two threads, 2.03 s with one, for the README's prompt-pairs line).
- **the other jobs on the machine**: torch's threads wait for each other at the end of every op, so
  one of them that waits for a core (because other processes hold them) stalls the rest.  Measured
  on this project's 2-core machine with four busy processes beside the run: ACDC on a random 2-layer
  GPT-2 took 22.4 s with two threads and 2.5 s with one.  ``auto`` counts the processes that are
  running or waiting to run now (``/proc/loadavg``, sampled a few times; the 1-minute load average
  where that file is missing) and uses at most the cores they leave free, and at least one.

A run big enough and a machine free enough get torch's own count (``torch_default``, one per core,
or what ``OMP_NUM_THREADS`` said).  An integer ``threads=N`` sets N.  ``summary.json`` records the
setting, the count used, torch's default, what ``auto`` looked at and, in words, why (``reason``).
The count is restored when the run ends, so calling ``pipeline.run`` from a notebook leaves torch as
it was.  ``benchmarks/threads_auto.py`` measures ``auto`` against one thread and torch's default,
on a quiet machine and beside four busy loops.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

# Activations per forward below which every op is too small to split (see the module's docstring).
SMALL_WORK = 100_000
LOADAVG = "/proc/loadavg"


def activations_per_forward(problem) -> dict:
    """The size of a forward's largest op on the split a method searches, in output elements: the
    blocks' prompts x positions x d_model, or the unembedding's prompts x metric positions x d_vocab."""
    data = problem.data("validation")
    prompts, positions = int(data.clean.shape[0]), int(data.clean.shape[-1])
    cfg = problem.task.model.cfg
    d_vocab = int(getattr(cfg, "d_vocab_out", None) or cfg.d_vocab)
    d_model, read = int(cfg.d_model), int(data.positions.shape[-1])
    return dict(prompts=prompts, positions=positions, d_model=d_model, metric_positions=read, d_vocab=d_vocab,
                activations=max(prompts * positions * d_model, prompts * read * d_vocab))


def _own_running() -> int:
    """This process's threads that are running now (at least the one asking; torch's idle workers
    may still be spinning after a parallel op)."""
    running = 0
    for stat in Path("/proc/self/task").glob("*/stat"):
        try:
            running += stat.read_text().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            continue
    return max(running, 1)


def other_runnable(samples: int = 5, interval: float = 0.01) -> float:
    """How many threads of other processes are running or waiting for a core now: the median of a
    few readings of ``/proc/loadavg``'s running count less this process's own running threads; the
    1-minute load average where the file is missing."""
    readings = []
    for i in range(samples):
        try:
            own = _own_running()
            with open(LOADAVG) as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return max(0.0, os.getloadavg()[0] - 1) if hasattr(os, "getloadavg") else 0.0
        readings.append(max(0, running - own))
        if i + 1 < samples:
            time.sleep(interval)
    return float(sorted(readings)[len(readings) // 2])


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def choose_threads(setting: str | int, activations: int, default: int, cores: int, others: float) -> tuple[int, str]:
    """The thread count and why: ``activations`` per forward, torch's ``default`` count, the
    ``cores`` this process may use and the ``others`` processes running beside it."""
    if setting != "auto":
        return int(setting), f"threads={setting} was set"
    if activations < SMALL_WORK:
        return 1, (f"ops of {activations:,} activations per forward (under {SMALL_WORK:,}) are too small to "
                   "gain from more threads")
    if default <= 1:
        return 1, "torch's default is one thread (OMP_NUM_THREADS or one core)"
    free = int(cores - others)
    if free < 2:
        return 1, (f"{others:g} other processes running on {cores} cores: threads would wait for each other's "
                   "cores")
    used = min(default, free)
    return used, (f"ops of {activations:,} activations per forward and {free} of {cores} cores free: "
                  f"{used} threads" + (" (torch's default)" if used == default else ""))


@contextmanager
def torch_threads(setting: str | int, problem) -> Iterator[dict]:
    """Run the block with the chosen thread count; yields what to record in the summary."""
    before = torch.get_num_threads()
    work = activations_per_forward(problem)
    cores = available_cores()
    others = other_runnable() if setting == "auto" else None
    used, reason = choose_threads(setting, work["activations"], before, cores, others or 0.0)
    torch.set_num_threads(used)
    try:
        yield dict(setting=setting, used=used, torch_default=before, reason=reason,
                   activations_per_forward=work["activations"], work=work, cores=cores, other_processes=others)
    finally:
        torch.set_num_threads(before)
