"""Exact single-edge effects against EAP and EAP-IG on any task (see ``circuitfind.evaluation.exact_effects``).

    python scripts/exact_vs_attribution.py task=tracr_reverse corruption=zero
    python scripts/exact_vs_attribution.py task=induction --steps 5 --k 10 30 --csv out.csv

Arguments other than the options are config overrides, as for ``circuitfind``.  Prints, per method,
the Spearman correlation of its signed scores with the exact effects (and of the absolute values),
and the overlap of the top-k edges by |value|.  The objective is the methods' default
(``objective=auto``: the clean answer's logit where the metric is KL or l2).
"""

from __future__ import annotations

import argparse
import csv
import sys

from circuitfind.evaluation.exact_effects import compare_attributions
from circuitfind.methods.objective import resolve_objective
from circuitfind.runs.pipeline import build_problem, compose_config


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=5, help="EAP-IG steps")
    parser.add_argument("--k", type=int, nargs="+", default=[10], help="top-k overlaps")
    parser.add_argument("--objective", default="auto", choices=["auto", "metric", "answer_logit"])
    parser.add_argument("--csv", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    try:
        cfg = compose_config("progress=false", *args.overrides)
    except Exception as error:  # a bad override: Hydra's own message, on one line
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    problem = build_problem(cfg)
    objective = resolve_objective(problem, args.objective)
    rows = compare_attributions(problem, objective, args.steps, tuple(args.k))
    print(f"{cfg.task.name} ({problem.corruption}, {problem.graph.granularity} graph, {problem.graph.n_edges} edges), "
          f"objective {objective}")
    for row in rows:
        print("  " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
