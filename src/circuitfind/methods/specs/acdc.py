"""ACDC's spec: the threshold ``tau`` (top-level ``tau=``, each task's default), one circuit per tau."""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import MethodSpec, SweptParameter, is_int, is_number, register


def check_tau(tau) -> None:
    # tau <= 0 would remove nothing (or keep removing edges that hurt): never what is meant
    if not is_number(tau) or tau <= 0:
        raise ValueError(f"tau must be a positive number, got {tau!r}")


def check_acdc_params(tau, max_edge_tests=None, abs_delta=False, batch_edges="auto") -> None:
    """One-line errors for bad ACDC settings (also run on the config before any model loads)."""
    check_tau(tau)
    if batch_edges != "auto" and not is_int(batch_edges, 1):
        raise ValueError(f"batch_edges must be a positive integer or auto, got {batch_edges!r}")
    if max_edge_tests is not None and not is_int(max_edge_tests, 0):
        raise ValueError(f"max_edge_tests must be a non-negative integer or null, got {max_edge_tests!r}")
    if not isinstance(abs_delta, bool):
        raise ValueError(f"abs_delta must be true or false, got {abs_delta!r}")


@dataclass(frozen=True)
class ACDCParams:
    tau: float
    abs_delta: bool = False
    max_edge_tests: int | None = None
    batch_edges: int | str = "auto"

    def __post_init__(self):
        check_acdc_params(self.tau, self.max_edge_tests, self.abs_delta, self.batch_edges)


SPEC = register(MethodSpec(
    name="acdc", label="ACDC", params=ACDCParams, run="circuitfind.methods.acdc:acdc",
    parameter="tau", parameter_label="ACDC threshold τ", curve="per_run",
    sweep=SweptParameter(key="tau", short="tau", needs_task_values=True), checkpoints=True, top_level=("tau",),
    order=10, cmap="Blues", marker="o", cost=2))
