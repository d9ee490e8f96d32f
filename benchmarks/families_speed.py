"""Seconds per ACDC edge test, and the engine's agreement with the hook reference, on small random
models of each block family beside a GPT-2-shaped one of the same size.

    python benchmarks/families_speed.py [--layers 4] [--heads 8] [--d-head 32] [--prompts 8] [--seq 32] [--tests 60]

Every model has the same layers x heads x d_head, vocabulary and prompts, so the ratios isolate what
each family's blocks cost.  Agreement: the largest |engine - reference| logit over two random masks
and one fractional mask (float32 weights, corrupted-prompt ablation)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from families import FAMILIES, family_model  # noqa: E402
from test_acdc import random_task  # noqa: E402

from circuitfind.core.graph import Architecture, EdgeMask, Graph  # noqa: E402
from circuitfind.methods import Problem, get_method  # noqa: E402
from circuitfind.core.metrics import KL  # noqa: E402
from circuitfind.engine.reference import reference_ablation, reference_logits  # noqa: E402

# the "rotary" family (LayerNorm, plain MLP, biases) with learned positions instead: GPT-2's blocks
GPT2_SHAPED = dict(positional_embedding_type="standard", rotary_dim=None)


def measure(name: str, family: str, overrides: dict, args) -> str:
    model = family_model(family, n_layers=args.layers, n_heads=args.heads, d_head=args.d_head,
                         dtype=torch.float32, d_vocab=args.vocab, n_ctx=args.seq, **overrides)
    task = random_task(model, batch=args.prompts, seq=args.seq)
    graph = Graph(Architecture.from_config(model.cfg))
    problem = Problem(task, graph, "corrupted", KL, progress=False)
    engine = problem.engine("validation")
    start = time.perf_counter()
    get_method("acdc")(problem, tau=1e-12, max_edge_tests=args.tests, batch_edges=1)  # tau ~0: every test keeps its edge
    per_test = (time.perf_counter() - start) / args.tests
    data = task.validation
    ablated = reference_ablation(model, data.corrupted, "corrupted")
    g = torch.Generator().manual_seed(0)
    masks = [(torch.rand(graph.n_edges, generator=g) > p).float() for p in (0.3, 0.7)]
    masks.append(torch.rand(graph.n_edges, generator=g))
    worst = max(float((engine.logits(m) - reference_logits(model, graph, data.clean, ablated, EdgeMask(graph, m))).abs().max())
                for m in masks)
    scale = float(engine.logits(masks[0]).abs().max())
    return f"{name:16s} {graph.n_edges:7d} {per_test:10.4f}   {worst:9.2e} (logits up to {scale:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, default in (("--layers", 4), ("--heads", 8), ("--d-head", 32), ("--prompts", 8), ("--seq", 32),
                          ("--tests", 60), ("--vocab", 1000)):
        parser.add_argument(flag, type=int, default=default)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{args.layers} layers x {args.heads} heads x d_head {args.d_head}, {args.prompts} prompts x {args.seq} tokens, "
          f"{args.tests} edge tests (batch_edges=1)")
    print(f"{'family':16s} {'edges':>7s} {'s/test':>10s}   max |engine - reference|")
    print(measure("gpt2-shaped", "rotary", GPT2_SHAPED, args))
    for family, options in FAMILIES.items():
        # the tiny families' proportions at this size: full rotary or a quarter (Pythia), the same
        # number of query heads per key/value head (the tiny models have 6 query heads)
        overrides = dict(rotary_dim=args.d_head if options["rotary_dim"] == 8 else args.d_head // 4)
        if "n_key_value_heads" in options:
            overrides["n_key_value_heads"] = max(1, args.heads // (6 // options["n_key_value_heads"]))
        print(measure(family, family, overrides, args))


if __name__ == "__main__":
    main()
