"""Tasks: a model, clean and corrupted prompts, positions, metrics and (where known) the ground truth.

The registry and the task types load on first use, so that torch-free modules of this package
(``pairs_file``, read while a config is checked) import without torch and TransformerLens."""

from __future__ import annotations

_LAZY = {"TASKS": "registry", "build_task": "registry", "Task": "base", "TaskData": "base"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{_LAZY[name]}", __name__), name)


__all__ = ["TASKS", "Task", "TaskData", "build_task"]
