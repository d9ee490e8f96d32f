"""HISP's spec: one ranking of components, the whole top-k curve from one run."""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import MethodSpec, is_int, is_number, register

OBJECTIVES = ("auto", "metric", "answer_logit")


def check_ranking_params(k="auto", max_points=None, target=0.8, pruned=True) -> None:
    """One-line errors for the settings every ranking method shares (see ``methods/ranking.py``)."""
    if k not in ("auto", "all") and not is_int(k, 0):
        raise ValueError(f"k must be auto, all or a non-negative integer, got {k!r}")
    if max_points is not None and not is_int(max_points, 2):
        raise ValueError(f"max_points must be null or an integer of at least 2, got {max_points!r}")
    if not is_number(target):
        raise ValueError(f"target must be a number (the faithfulness k=auto reaches), got {target!r}")
    if not isinstance(pruned, bool):
        raise ValueError(f"pruned must be true or false, got {pruned!r}")


def check_hisp_params(k="auto", objective="auto", max_points=None, target=0.8, pruned=True) -> None:
    check_ranking_params(k, max_points, target, pruned)
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown HISP objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")


@dataclass(frozen=True)
class HISPParams:
    k: int | str = "auto"
    objective: str = "auto"
    max_points: int | None = None
    target: float = 0.8
    pruned: bool = True

    def __post_init__(self):
        check_hisp_params(self.k, self.objective, self.max_points, self.target, self.pruned)


SPEC = register(MethodSpec(
    name="hisp", label="HISP", params=HISPParams, run="circuitfind.methods.hisp:hisp",
    parameter="k", parameter_label="HISP components kept k", curve="ranking", order=30, cmap="Greens", marker="D"))
