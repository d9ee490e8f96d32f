"""EAP and EAP-IG speed and memory on the GPT-2-shaped random model, beside ACDC's estimated run.

    python benchmarks/attribution_speed.py                   # 50 prompts x 16 tokens, EAP-IG 5 steps
    python benchmarks/attribution_speed.py --device cuda --steps 5 --acdc-tests 24

The model and prompts are those of ``benchmarks/acdc_speed.py`` (12 layers, d_model 768, 12 heads,
vocab 50,257; random tokens, corrupted ablation, the last position; 32,923 edges).  Timed, best of
``--repeats`` after a warm-up:

  plain forward    ``model(tokens)``: TransformerLens, logits at every position (the unit of the ratios)
  engine forward   the engine at the full mask, logits at the metric position
  EAP              from nothing: the corrupted run (the ablation), one differentiable engine forward
                   at the full mask (its logits are also the clean answer) and its backward
                   (``attribution_scores``)
  EAP-IG           the ablation, the clean run and ``--steps`` forwards and backwards along the masks alpha * 1
  ACDC (estimate)  the mean of ``--acdc-tests`` single-edge tests restarted from the engine's cache,
                   spread over all receivers, times the number of edges: every edge tested once, as a
                   whole ACDC run does (one test per forward, as ``batch_edges=auto`` picks on a CPU)

Peak memory: the process's peak resident set after each phase (CPU; it only grows, and the phases
run in the order above) or ``torch.cuda.max_memory_allocated`` per phase (GPU).  The objective is
the methods' default on KL (``answer_logit``: the clean answer's logit minus the mean logit).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message="HookedTransformer is deprecated")

import torch  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from circuitfind.core.graph import Architecture, Graph  # noqa: E402
from circuitfind.methods import Problem  # noqa: E402
from circuitfind.methods.attribution import attribution_scores, objective_loss  # noqa: E402
from circuitfind.core.metrics import KL  # noqa: E402
from circuitfind.tasks import TaskData  # noqa: E402
from circuitfind.tasks.base import Task  # noqa: E402

OBJECTIVE = "answer_logit"


def gpt2_shaped(device: str) -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
                                  n_ctx=1024, act_fn="gelu_new", normalization_type="LNPre", device=device, seed=0)
    return HookedTransformer(cfg).eval().requires_grad_(False)


def random_task(model: HookedTransformer, batch: int, seq: int) -> Task:
    g = torch.Generator().manual_seed(0)
    device = model.W_E.device
    clean = torch.randint(0, model.cfg.d_vocab, (batch, seq), generator=g).to(device)
    corrupted = torch.randint(0, model.cfg.d_vocab, (batch, seq), generator=g).to(device)
    data = TaskData(clean, corrupted, torch.full((batch, 1), seq - 1, device=device))
    return Task("random", model, data, data, {"kl": KL}, "kl")


def peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def best_of(repeats: int, device: str, fn) -> float:
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def phase(name: str, rows: list, device: str, repeats: int, fn) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = best_of(repeats, device, fn)
    rows.append((name, seconds, peak_mb(device)))
    print(f"  {name:<16} {seconds:9.3f} s  peak {rows[-1][2]:8.0f} MB", flush=True)


def acdc_test_seconds(problem: Problem, n_tests: int, device: str) -> float:
    """Mean time of one ACDC edge test (one edge removed from the full circuit, restarted at its stage)."""
    graph, engine, data = problem.graph, problem.engine(), problem.data("validation")
    receivers = dict.fromkeys(e.receiver for e in graph.edges)  # as ACDC first meets them
    order = [e for r in receivers for e in graph.incoming[r]]
    sample = [order[i] for i in torch.linspace(0, len(order) - 1, n_tests).round().long().tolist()]
    full = torch.ones(graph.n_edges, dtype=engine.dtype)
    with torch.no_grad():
        _, cache = engine.run(full, data.positions, record=True)

        def one(e: int) -> float:
            mask = full.clone()
            mask[e] = 0
            logits, _ = engine.run(mask, data.positions, start_stage=graph.edges[e].stage, cache=cache)
            return float(objective_loss(problem, logits, OBJECTIVE))

        one(sample[0])  # warm-up
        return best_of(1, device, lambda: [one(e) for e in sample]) / len(sample)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="EAP-IG steps")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--acdc-tests", type=int, default=12)
    args = parser.parse_args(argv)
    device = args.device
    model = gpt2_shaped(device)
    task = random_task(model, args.batch, args.seq)
    graph = Graph(Architecture.from_config(model.cfg))

    def fresh() -> Problem:  # nothing cached: each method pays for its ablation and clean run
        return Problem(task, graph, "corrupted", KL, progress=False)

    print(f"gpt2-shaped {args.batch}x{args.seq}, {graph.n_edges} edges, {device}, "
          f"{torch.get_num_threads()} threads, loadavg {open('/proc/loadavg').read().split()[:3]}")
    rows: list[tuple[str, float, float]] = []
    with torch.no_grad():
        model(task.validation.clean)  # warm-up
        phase("plain forward", rows, device, args.repeats + 1, lambda: model(task.validation.clean))
        problem = fresh()
        engine, positions = problem.engine(), task.validation.positions
        phase("engine forward", rows, device, args.repeats + 1, lambda: engine.logits(graph.full_mask(), positions))
    del problem, engine  # the attribution phases' peak is their own: nothing else holds an ablation
    attribution_scores(fresh(), OBJECTIVE)  # warm-up (allocator, autograd)
    phase("EAP", rows, device, args.repeats, lambda: attribution_scores(fresh(), OBJECTIVE))
    phase(f"EAP-IG {args.steps}", rows, device, 1, lambda: attribution_scores(fresh(), OBJECTIVE, args.steps))
    per_test = acdc_test_seconds(fresh(), args.acdc_tests, device)
    rows.append(("ACDC (estimate)", per_test * graph.n_edges, peak_mb(device)))

    unit = rows[0][1]
    print(f"\n{'':<18}{'seconds':>10}{'x forward':>11}{'peak MB':>9}")
    for name, seconds, peak in rows:
        print(f"{name:<18}{seconds:>10.3f}{seconds / unit:>10.1f}x{peak:>9.0f}")
    print(f"(ACDC: {per_test:.3f} s per edge test x {graph.n_edges} edges; peak MB: the process's peak so far)")


if __name__ == "__main__":
    main()
