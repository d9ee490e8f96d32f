"""What circuitfind knows about a method, declared once: its ``MethodSpec``.

A spec names the method, labels it for tables and plots, types its parameters (a dataclass whose
``__post_init__`` checks them), says which parameter a sweep varies and how a curve is read from
runs (``per_run``: one circuit per run, e.g. ACDC's tau or SP's lambda; ``ranking``: every top-k of
one run's ranking, e.g. HISP; ``none``: one circuit), whether the method checkpoints, and where its
run function lives.  The pipeline, the report, the figures and ``threshold=paper`` read all of this
from the spec; no other module names a method.

Specs live in torch-free modules (``methods/specs/<name>.py``, found by ``load_specs``), so a config
is checked in a fraction of a second, before torch or a model loads; the run function is named as
``"module:function"`` and imported only when a run starts.  It is called as
``function(problem, **fields of the parameters[, checkpointer=...])`` and returns ``MethodResult``.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

CURVES = ("per_run", "ranking", "none")


@dataclass(frozen=True)
class SweptParameter:
    """The parameter a sweep of a ``per_run`` method varies."""

    key: str  # the command-line key: "tau", "method.lambda_reg"
    short: str  # how a sweep's job folders name it: "tau", "lambda"
    # True when threshold=paper needs the task's own list (task.sweeps.<method>), False when the
    # method's sweep file has a default list
    needs_task_values: bool = False


@dataclass(frozen=True)
class MethodSpec:
    name: str  # the config name: method=<name>, configs/method/<name>.yaml
    label: str  # in tables and plots
    params: type  # a dataclass of the run function's parameters; __post_init__ raises ValueError
    run: str  # "module:function"
    parameter: str | None = None  # the summary's parameter_name: what the method's curve varies
    parameter_label: str | None = None  # its colour bar's label in the figures
    curve: str = "none"  # per_run | ranking | none
    sweep: SweptParameter | None = None  # per_run methods: what threshold=paper and the figures vary
    checkpoints: bool = False  # the run function takes a ``checkpointer``
    # config keys read from the top level rather than method.* (ACDC's tau, SP's seed)
    top_level: tuple[str, ...] = ()
    variants: Mapping[str, str] = field(default_factory=dict)  # result labels -> their own labels
    order: int = 50  # where tables and legends list it
    cmap: str = "Greys"  # its colour map in every picture: the method is the hue, its parameter the shade
    marker: str = "o"  # its marker in every picture
    cost: int = 1  # relative cost of one job (the figures start the costliest sweeps first)
    # check_metric(params, metric, divergence): refuse (ValueError) parameters that cannot work with
    # the run's metric (``metric``: its name; ``divergence``: whether it is measured against the
    # unpatched model, so that its gradient there is zero), from the config alone
    check_metric: Callable[[Any, str, bool], None] | None = None

    def __post_init__(self):
        if self.curve not in CURVES:
            raise ValueError(f"method {self.name}: curve must be one of {', '.join(CURVES)}")
        if (self.curve == "per_run") != (self.sweep is not None):
            raise ValueError(f"method {self.name}: a per_run curve needs a sweep, and only it")
        if not dataclasses.is_dataclass(self.params):
            raise ValueError(f"method {self.name}: params must be a dataclass")

    def check(self, method_cfg: Mapping[str, Any], top: Mapping[str, Any]):
        """The typed parameters of ``method_cfg`` (the config's ``method`` group, without its name)
        and the spec's top-level keys: unknown keys and bad values raise ValueError."""
        names = {f.name for f in dataclasses.fields(self.params)}
        unknown = sorted(set(method_cfg) - {"name"} - names)
        if unknown:
            raise ValueError(f"method {self.name} has no parameter {unknown[0]!r}; "
                             f"it has {', '.join(sorted(names - set(self.top_level))) or 'none'}")
        values = {k: v for k, v in method_cfg.items() if k != "name"}
        values.update({k: top[k] for k in self.top_level if k in top})
        return self.params(**values)

    def function(self) -> Callable:
        module, name = self.run.split(":")
        return getattr(importlib.import_module(module), name)

    def labels(self) -> dict[str, str]:
        """Every label a run of this method may carry (its name and its variants'), readable."""
        return {self.name: self.label, **self.variants}


SPECS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in SPECS and SPECS[spec.name] != spec:
        raise ValueError(f"method {spec.name!r} is registered twice")
    SPECS[spec.name] = spec
    return spec


def load_specs() -> dict[str, MethodSpec]:
    """Every method's spec (imports each module of ``methods/specs/`` once; no torch)."""
    from . import specs

    for module in pkgutil.iter_modules(specs.__path__):
        importlib.import_module(f"{specs.__name__}.{module.name}")
    return SPECS


def get_spec(name: str) -> MethodSpec:
    specs = load_specs()
    if name not in specs:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(specs))}")
    return specs[name]


def method_labels() -> dict[str, str]:
    """Label of every method and variant, in the specs' order."""
    return {k: v for spec in ordered_specs() for k, v in spec.labels().items()}


def ordered_specs() -> list[MethodSpec]:
    return sorted(load_specs().values(), key=lambda s: (s.order, s.name))


def method_rank(label: str) -> tuple[int, str]:
    """Sort key of a method (or a variant) in tables and legends: registered ones in their order,
    then any other by name."""
    names = list(method_labels())
    return (names.index(label), "") if label in names else (len(names), label)


def spec_of_label(label: str) -> MethodSpec | None:
    """The spec a run's method label (a method or one of its variants) belongs to."""
    return next((s for s in load_specs().values() if label in s.labels()), None)


# ---- checks shared by the parameter dataclasses ------------------------------------------------
def is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def is_int(value, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= minimum
