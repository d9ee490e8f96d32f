"""A method's finished result as a checkpoint's state, and back.

A run stopped after its method ended (Ctrl-C during the evaluation of a ranking method's curve,
say) keeps the method's result in the run folder's checkpoint (``Checkpointer.save(..., finished=True)``),
so the next run of the config evaluates it instead of running the method again.  Checkpoints are
read with ``torch.load(weights_only=True)``, which takes tensors and plain containers only: the
masks are stored as tensors, the trace, tables and details as JSON text.
"""

from __future__ import annotations

import json

from ..core.graph import EdgeMask, Graph
from ..methods.result import CurvePoint, MethodResult


def _plain(value):
    """What JSON cannot take as it is: numpy and torch scalars and arrays."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} in a method's result cannot be checkpointed")


def _json(value) -> str:
    return json.dumps(value, default=_plain, allow_nan=True)


def result_state(result: MethodResult) -> dict:
    """``result`` as tensors and JSON text (the graph is the run's own: rebuilt from the config)."""
    curve = None
    if result.curve is not None:
        curve = dict(parameters=_json([p.parameter for p in result.curve]),
                     removed=_json([p.removed for p in result.curve]),
                     masks=[p.circuit.values for p in result.curve])
    return dict(n_edges=result.graph.n_edges, scores=result.scores, kept=result.kept.values,
                parameter=_json(result.parameter), curve=curve, trace=_json(result.trace),
                tables=_json(result.tables), details=_json(result.details), label=result.label)


def result_from_state(graph: Graph, state: dict) -> MethodResult:
    """The ``MethodResult`` that ``result_state`` stored, on ``graph``."""
    if state["n_edges"] != graph.n_edges:
        raise ValueError(f"the saved result has {state['n_edges']} edges, the graph {graph.n_edges}")
    curve = None
    if state["curve"] is not None:
        parameters, removed = json.loads(state["curve"]["parameters"]), json.loads(state["curve"]["removed"])
        curve = [CurvePoint(p, EdgeMask(graph, values), r)
                 for p, values, r in zip(parameters, state["curve"]["masks"], removed)]
    return MethodResult(graph, state["scores"], EdgeMask(graph, state["kept"]), parameter=json.loads(state["parameter"]),
                        curve=curve, trace=json.loads(state["trace"]), tables=json.loads(state["tables"]),
                        details=json.loads(state["details"]), label=state["label"])

