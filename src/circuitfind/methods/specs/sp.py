"""Subnetwork Probing's spec: the sparsity weight ``lambda_reg``, one circuit per lambda."""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import MethodSpec, SweptParameter, is_int, is_number, register

GATE_LEVELS = ("components", "edges")


def check_sp_params(lambda_reg, epochs, lr, gates="components", init_open=0.9, log_every=10) -> None:
    """One-line errors for bad SP settings (also run on the config before any model loads)."""
    if not is_number(lambda_reg) or lambda_reg < 0:
        raise ValueError(f"lambda_reg must be a non-negative number, got {lambda_reg!r}")
    if not is_int(epochs, 0):
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if not is_number(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if gates not in GATE_LEVELS:
        raise ValueError(f"unknown SP gate level {gates!r}; choose one of {', '.join(GATE_LEVELS)}")
    if not is_number(init_open) or not 0 < init_open < 1:
        raise ValueError(f"init_open must lie strictly between 0 and 1, got {init_open!r}")
    if not is_int(log_every, 1):
        raise ValueError(f"log_every must be a positive integer, got {log_every!r}")


@dataclass(frozen=True)
class SPParams:
    lambda_reg: float = 1.0
    epochs: int = 3000
    lr: float = 1e-3
    gates: str = "components"
    init_open: float = 0.9
    beta: float = 2 / 3
    gamma: float = -0.1
    zeta: float = 1.1
    log_every: int = 10
    seed: int = 0  # the top-level seed: the gate noise

    def __post_init__(self):
        check_sp_params(self.lambda_reg, self.epochs, self.lr, self.gates, self.init_open, self.log_every)


SPEC = register(MethodSpec(
    name="sp", label="SP", params=SPParams, run="circuitfind.methods.sp:subnetwork_probing",
    parameter="lambda_reg", parameter_label="SP regularisation λ", curve="per_run",
    sweep=SweptParameter(key="method.lambda_reg", short="lambda"), checkpoints=True, top_level=("seed",),
    variants={"sp_edges": "SP (edge gates)"}, order=20, cmap="Oranges", marker="s", cost=10))
