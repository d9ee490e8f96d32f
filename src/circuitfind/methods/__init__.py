"""Circuit-discovery methods: one spec each (``spec.MethodSpec``, declared in ``specs/``), one run
function each (``method(problem, **params) -> MethodResult``, imported when first needed).

This package imports no torch: ``get_spec``/``load_specs`` check a config before anything heavy
loads; ``Problem`` and ``get_method`` load the engine on first use."""

from __future__ import annotations

from .spec import SPECS, MethodSpec, get_spec, load_specs

__all__ = ["SPECS", "MethodSpec", "Problem", "get_method", "get_spec", "load_specs"]


def get_method(name: str):
    """The run function of method ``name``."""
    return get_spec(name).function()


def __getattr__(name: str):
    if name == "Problem":  # torch: only when asked for
        from .base import Problem

        return Problem
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
