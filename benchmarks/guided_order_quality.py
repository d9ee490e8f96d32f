"""How well each order of guided ACDC ranks the edges ACDC keeps, at the circuits ACDC visits.

    python benchmarks/guided_order_quality.py RUN_FOLDER resid_post,m4,m3,m0 task=ioi model.pretrained=false tau=0.001

RUN_FOLDER is a plain ACDC run (``method=acdc``) of the same config: its ``trace.csv`` gives the
circuit ACDC had when it visited each named receiver (every earlier visit's removals applied, the
inputs of receivers that fed nothing dropped).  At that circuit, for each input edge of the
receiver: the exact loss rise of removing it alone (``single_edge_effects``: one patched forward
each, restarted at the receiver's stage), and the importance each order gives it
(``attribution_order``: EAP, EAP-IG).
Printed per receiver: the Spearman correlation of each order with the exact rises, and the ranks
(0 = first) that each order gives the edges whose rise is at least tau (the edges a test alone
keeps).  Every rise is an exact forward; nothing is estimated.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from circuitfind.evaluation.exact_effects import single_edge_effects, spearman
from circuitfind.methods.acdc import visits
from circuitfind.methods.guided_order import attribution_order
from circuitfind.runs.pipeline import build_problem


def circuit_before(graph, kept_by_acdc: set[str], receiver: str) -> tuple[torch.Tensor, list[int]]:
    """ACDC's circuit when it visits ``receiver`` (first visit), and that visit's edges."""
    mask = torch.ones(graph.n_edges)
    for name, incoming in visits(graph):
        if name == receiver:
            return mask, incoming
        mask[[e for e in incoming if graph.edges[e].name not in kept_by_acdc]] = 0
    raise SystemExit(f"no receiver {receiver!r} in the graph")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a plain ACDC run folder of the same config")
    parser.add_argument("receivers", help="comma-separated receivers, e.g. resid_post,m3")
    parser.add_argument("overrides", nargs="*", help="the run's circuitfind overrides (task=..., model...)")
    parser.add_argument("--orders", default="eap,eap_ig")
    args = parser.parse_args()
    rows = list(csv.DictReader((args.run / "trace.csv").open()))
    kept_by_acdc = {r["edge"] for r in rows if r["kept"] in ("1", "True")}
    with initialize_config_module("circuitfind.configs", version_base=None):
        cfg = compose("config", overrides=[*args.overrides, "progress=false"])
    problem = build_problem(cfg)
    tau = float(cfg.tau)
    print(f"load {Path('/proc/loadavg').read_text().split()[0]}, tau {tau:g}", flush=True)
    for receiver in args.receivers.split(","):
        mask, edges = circuit_before(problem.graph, kept_by_acdc, receiver)
        rises = single_edge_effects(problem, "metric", circuit=mask, edges=edges)[edges]
        strong = rises >= tau
        print(f"{receiver}: {len(edges)} edges, {int(strong.sum())} with an exact rise >= tau", flush=True)
        for order in args.orders.split(","):
            started = time.perf_counter()
            importance = attribution_order(problem, order)(mask.double(), edges)
            rank = importance.argsort(descending=True).argsort()
            print(f"  {order:7s} Spearman {spearman(importance, rises):.3f}, ranks of those edges "
                  f"{sorted(rank[strong].tolist())}, {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
