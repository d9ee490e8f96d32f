"""Guided ACDC's spec: ACDC's threshold ``tau`` (top-level ``tau=``, the task's ACDC sweep under
threshold=paper), one circuit per tau, and how attribution orders and groups the exact tests."""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import MethodSpec, SweptParameter, is_int, register
from .acdc import check_acdc_params

ORDERS = ("eap", "eap_ig", "random", "graph")
GROUPS = ("stage", "receiver")
SPLITS = ("mass", "half")


def check_guided_params(tau, order="eap_ig", group="receiver", rescore=True, ig_steps=3, seed=0, abs_delta=False,
                        max_edge_tests=None, batch_edges="auto", split="mass", budget=0.75,
                        carry=True, carry_chance=0.1) -> None:
    """One-line errors for bad guided-ACDC settings (also run on the config before any model loads)."""
    check_acdc_params(tau, max_edge_tests, abs_delta, batch_edges)
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; choose one of {', '.join(GROUPS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 <= budget <= 1:
        raise ValueError(f"budget must be a number from 0 to 1 (a share of tau), got {budget!r}")
    if isinstance(carry_chance, bool) or not isinstance(carry_chance, (int, float)) or not carry_chance >= 0:
        raise ValueError(f"carry_chance must be a number of at least 0 (kept edges by their chances), "
                         f"got {carry_chance!r}")
    for name, value in (("rescore", rescore), ("carry", carry)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
    if not is_int(ig_steps, 1):
        raise ValueError(f"ig_steps must be a positive integer, got {ig_steps!r}")
    if not is_int(seed, 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


@dataclass(frozen=True)
class GuidedACDCParams:
    tau: float
    order: str = "eap_ig"
    group: str = "receiver"
    rescore: bool = True
    ig_steps: int = 3
    seed: int = 0
    abs_delta: bool = False
    max_edge_tests: int | None = None
    batch_edges: int | str = "auto"
    split: str = "mass"
    budget: float = 0.75
    carry: bool = True
    carry_chance: float = 0.1

    def __post_init__(self):
        check_guided_params(self.tau, self.order, self.group, self.rescore, self.ig_steps, self.seed,
                            self.abs_delta, self.max_edge_tests, self.batch_edges, self.split, self.budget,
                            self.carry, self.carry_chance)


SPEC = register(MethodSpec(
    name="acdc_guided", label="ACDC (guided)", params=GuidedACDCParams,
    run="circuitfind.methods.acdc_guided:acdc_guided", parameter="tau", parameter_label="guided ACDC threshold τ",
    curve="per_run", sweep=SweptParameter(key="tau", short="tau"), checkpoints=True,
    top_level=("tau", "seed"), order=15, cmap="Greys", marker="P", cost=2))
