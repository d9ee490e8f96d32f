"""HISP's spec: one ranking of components, the whole top-k curve from one run."""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import MethodSpec, is_int, register

OBJECTIVES = ("auto", "metric", "answer_logit")


def check_hisp_params(k=None, objective="auto", max_points=None) -> None:
    if k is not None and not is_int(k, 0):
        raise ValueError(f"k must be null or a non-negative integer, got {k!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown HISP objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if max_points is not None and not is_int(max_points, 2):
        raise ValueError(f"max_points must be null or an integer of at least 2, got {max_points!r}")


@dataclass(frozen=True)
class HISPParams:
    k: int | None = None
    objective: str = "auto"
    max_points: int | None = None

    def __post_init__(self):
        check_hisp_params(self.k, self.objective, self.max_points)


SPEC = register(MethodSpec(
    name="hisp", label="HISP", params=HISPParams, run="circuitfind.methods.hisp:hisp",
    parameter="k", parameter_label="HISP components kept k", curve="ranking", order=30, cmap="Greens", marker="D"))
