"""A method's finished result as a checkpoint's state, and back.

A run stopped after its method ended (Ctrl-C during the evaluation, say) keeps the method's result
in the run folder's checkpoint (``Checkpointer.save(..., finished=True)``), so the next run of the
config evaluates it instead of running the method again: what ACDC's and SP's minutes or hours of
search are worth keeping for.  Checkpoints are read with ``torch.load(weights_only=True)``, which
takes tensors and plain containers only: masks are stored as tensors, everything else as JSON text.
A result that holds what neither can be (a ranking method's ranking, which holds a function) is not
stored (``result_state`` returns None): its scores are seconds of work, and the next run recomputes
them.
"""

from __future__ import annotations

import dataclasses
import json

from ..core.graph import EdgeMask, Graph
from ..methods.result import CurvePoint, MethodResult

TENSORS = ("scores",)  # MethodResult's tensor fields; ``kept`` and the curve's circuits are masks


class Unstorable(TypeError):
    """A value a checkpoint cannot hold."""


def _plain(value):
    """What JSON cannot take as it is: numpy and torch scalars and arrays."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise Unstorable(f"{type(value).__name__} cannot be checkpointed")


def _json(value) -> str:
    try:
        return json.dumps(value, default=_plain, allow_nan=True)
    except ValueError as error:  # a circular structure, say
        raise Unstorable(str(error)) from None


def _point_state(point: CurvePoint) -> dict:
    fields = {f.name: getattr(point, f.name) for f in dataclasses.fields(point) if f.name != "circuit"}
    return dict(circuit=point.circuit.values, fields=_json(fields))


def result_state(result: MethodResult) -> dict | None:
    """``result`` as tensors and JSON text (the graph is the run's own: rebuilt from the config), or
    None where it holds something a checkpoint cannot."""
    state = dict(n_edges=result.graph.n_edges, circuit=result.circuit.values)
    try:
        for f in dataclasses.fields(result):
            value = getattr(result, f.name)
            if f.name in ("graph", "circuit"):
                continue
            if f.name in TENSORS:
                state[f.name] = value
            elif f.name == "curve":
                state["curve"] = None if value is None else [_point_state(p) for p in value]
            elif callable(value) or dataclasses.is_dataclass(value):
                raise Unstorable(f"{f.name} cannot be checkpointed")
            else:
                state[f.name] = _json(value)
    except Unstorable:
        return None
    return state


def result_from_state(graph: Graph, state: dict) -> MethodResult:
    """The ``MethodResult`` that ``result_state`` stored, on ``graph``."""
    if state["n_edges"] != graph.n_edges:
        raise ValueError(f"the saved result has {state['n_edges']} edges, the graph {graph.n_edges}")
    values = dict(graph=graph, circuit=EdgeMask(graph, state["circuit"]))
    for f in dataclasses.fields(MethodResult):
        if f.name in values or f.name not in state:
            continue
        if f.name in TENSORS:
            values[f.name] = state[f.name]
        elif f.name == "curve":
            values["curve"] = None if state["curve"] is None else [
                CurvePoint(circuit=EdgeMask(graph, p["circuit"]), **json.loads(p["fields"])) for p in state["curve"]]
        else:
            values[f.name] = json.loads(state[f.name])
    return MethodResult(**values)
