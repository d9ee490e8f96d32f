"""Task registry: ``build_task(name, ...) -> Task``."""

from __future__ import annotations

import functools
from typing import Callable

from .base import Task, TaskData
from .docstring import docstring_task
from .greaterthan import greaterthan_task
from .induction import induction_task
from .ioi import ioi_task
from .pairs import pairs_task
from .tracr import tracr_proportion, tracr_reverse
from .tracr_suite import SUITE_TASKS

TASKS: dict[str, Callable[..., Task]] = {
    "tracr_reverse": tracr_reverse,
    "tracr_proportion": tracr_proportion,
    "ioi": ioi_task,
    "greaterthan": greaterthan_task,
    "docstring": docstring_task,
    "induction": induction_task,
    "algo_induction": functools.partial(induction_task, name="algo_induction"),
    "pairs": pairs_task,
    **SUITE_TASKS,  # tracr programs with ground-truth circuits derived from their weights
}


def build_task(name: str, **params) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(sorted(TASKS))}")
    return TASKS[name](**params)


__all__ = ["TASKS", "Task", "TaskData", "build_task"]
