"""EAP's spec: one ranking of edges by attribution patching, the whole top-k curve from one run."""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import MethodSpec, is_int, register
from .hisp import OBJECTIVES, check_ranking_params

IG_PATHS = ("masks", "inputs")


def check_attribution_params(k="auto", objective="auto", max_points=None, absolute=True, steps=5,
                             ig="masks", target=0.8, pruned=True) -> None:
    """One-line errors for bad EAP / EAP-IG settings."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    check_ranking_params(k, max_points, target, pruned)
    if not isinstance(absolute, bool):
        raise ValueError(f"absolute must be true or false, got {absolute!r}")
    if not is_int(steps, 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if ig not in IG_PATHS:
        raise ValueError(f"unknown ig path {ig!r}; choose one of {', '.join(IG_PATHS)}")


@dataclass(frozen=True)
class EAPParams:
    k: int | str = "auto"
    objective: str = "auto"
    max_points: int | None = None
    absolute: bool = True
    target: float = 0.8
    pruned: bool = True

    def __post_init__(self):
        check_attribution_params(self.k, self.objective, self.max_points, self.absolute, target=self.target,
                                 pruned=self.pruned)


def check_eap_metric(params: EAPParams, metric: str, divergence: bool) -> None:
    """EAP reads the objective's gradient at the unpatched model, where a divergence's is zero."""
    if divergence and params.objective == "metric":
        raise ValueError(f"metric {metric} is a divergence from the unpatched model: its gradient there is zero, so "
                         "EAP would rank rounding noise; use method.objective=answer_logit (or auto)")


SPEC = register(MethodSpec(
    name="eap", label="EAP", params=EAPParams, run="circuitfind.methods.attribution:eap",
    parameter="k", parameter_label="EAP edges kept k", curve="ranking", order=40, cmap="Purples", marker="^",
    check_metric=check_eap_metric))
