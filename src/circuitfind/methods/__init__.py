"""Circuit-discovery methods: one spec each (``spec.MethodSpec``, declared in ``specs/``), one run
function each (``method(problem, **params) -> MethodResult``, imported when first needed).

This package imports no torch: ``get_spec``/``load_specs`` check a config before anything heavy
loads; ``Problem`` and ``get_method`` load the engine on first use."""

from __future__ import annotations

import dataclasses
import functools

from .spec import SPECS, MethodSpec, get_spec, load_specs

__all__ = ["SPECS", "MethodSpec", "Problem", "get_method", "get_spec", "load_specs"]


def get_method(name: str):
    """The run function of method ``name``, called as ``method(problem, **params)``: its parameters
    are checked by the spec's dataclass first (where every setting is validated), so a bad value is
    one ValueError before anything runs."""
    spec = get_spec(name)
    function = spec.function()

    def checked(problem, **params):
        extra = {key: params.pop(key) for key in ("checkpointer",) if key in params}
        return function(problem, **dataclasses.asdict(spec.params(**params)), **extra)

    return functools.wraps(function)(checked)


def __getattr__(name: str):
    if name == "Problem":  # torch: only when asked for
        from .base import Problem

        return Problem
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
