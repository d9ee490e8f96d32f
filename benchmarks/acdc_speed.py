"""ACDC speed: the slow reference path against the patching engine, in one process.

    python benchmarks/acdc_speed.py                 # all three cases on the CPU
    python benchmarks/acdc_speed.py --device cuda --cases gpt2
    python benchmarks/acdc_speed.py --tests 300 --batch 50 --seq 16

Cases
  tracr_reverse  the whole ACDC run (zero ablation, tau 0.001) on both paths
  induction      the whole ACDC run on the 2-layer attention-only induction model (trained weights
                 when shipped, else random weights of the same shape), corrupted ablation
  gpt2           a random GPT-2-shaped model (12 layers, d_model 768, 12 heads, vocab 50,257),
                 50 prompts x 16 tokens: a fixed sample of edge tests spread evenly over all
                 receivers (a whole run is hours on a CPU), each removing one edge from the full
                 circuit, as ACDC's first pass over a receiver does

The slow path is ``reference.py``: TransformerLens hooks with split q/k/v inputs and per-head results,
one full forward per edge test.  The engine restarts each test at the receiver's layer from a cached
run.  "same edges" compares the keep/remove decision of every tested edge at the same tau.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message="HookedTransformer is deprecated")

import torch  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from circuitfind.engine import PatchEngine, gather_positions, make_ablation  # noqa: E402
from circuitfind.graph import Architecture, EdgeMask, Graph  # noqa: E402
from circuitfind.methods import Problem, get_method  # noqa: E402
from circuitfind.methods.acdc import acdc_search  # noqa: E402
from circuitfind.metrics import KL  # noqa: E402
from circuitfind.reference import reference_ablation, reference_logits  # noqa: E402
from circuitfind.tasks import TaskData, build_task  # noqa: E402
from circuitfind.tasks.base import Task  # noqa: E402


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reference_loss_fn(problem: Problem):
    """ACDC's loss with one full hooked forward per call (the slow path)."""
    task, graph, data = problem.task, problem.graph, problem.task.validation
    ablated = reference_ablation(task.model, data.corrupted, problem.corruption)

    def loss(mask: torch.Tensor, stage: int) -> float:
        with torch.no_grad():
            logits = reference_logits(task.model, graph, data.clean, ablated, EdgeMask(graph, mask))
        return float(problem.loss(gather_positions(logits, data.positions)))

    return loss


def whole_run(name: str, problem: Problem, tau: float, device: str) -> dict:
    """Both paths run all of ACDC; returns one table row."""
    sync(device)
    start = time.perf_counter()
    fast = get_method("acdc")(problem, tau=tau)
    sync(device)
    fast_s = time.perf_counter() - start
    engine_peak = peak_memory_mb(device)
    start = time.perf_counter()
    slow = acdc_search(problem.graph, reference_loss_fn(problem), tau, progress=False,
                       dtype=problem.task.model.cfg.dtype)
    sync(device)
    slow_s = time.perf_counter() - start
    n_tests = fast.extras["n_edge_tests"]
    return dict(case=name, edges=problem.graph.n_edges, tests=n_tests, slow_s=slow_s, fast_s=fast_s,
                slow_per_test=slow_s / max(slow.extras["n_edge_tests"], 1), fast_per_test=fast_s / max(n_tests, 1),
                same=fast.kept.kept_names() == slow.kept.kept_names(), peak_mb=engine_peak)


def random_task(model: HookedTransformer, batch: int, seq: int, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    device = model.W_E.device
    clean = torch.randint(0, model.cfg.d_vocab, (batch, seq), generator=g).to(device)
    corrupted = torch.randint(0, model.cfg.d_vocab, (batch, seq), generator=g).to(device)
    positions = torch.full((batch, 1), seq - 1, device=device)
    data = TaskData(clean, corrupted, positions)
    return Task("random", model, data, data, {"kl": KL}, "kl")


def sampled_tests(name: str, problem: Problem, n_tests: int, device: str, tau: float) -> dict:
    """Time a fixed, evenly spread sample of single-edge tests on both paths."""
    graph = problem.graph
    order = [e for r in graph.receivers_in_order for e in graph.incoming[r]]
    sample = [order[i] for i in torch.linspace(0, len(order) - 1, n_tests).round().long().tolist()]
    engine, data = problem.engine(), problem.data("validation")
    full = torch.ones(graph.n_edges, dtype=engine.dtype, device=engine.device)
    with torch.no_grad():
        logits, cache = engine.run(full, data.positions, record=True)
        base = float(problem.loss(logits))

        def fast_test(e: int) -> float:
            mask = full.clone()
            mask[e] = 0
            out, _ = engine.run(mask, data.positions, start_stage=graph.edges[e].stage, cache=cache)
            return float(problem.loss(out)) - base

        fast_test(sample[0])  # warm-up (allocations, kernels)
        sync(device)
        start = time.perf_counter()
        fast_deltas = [fast_test(e) for e in sample]
        sync(device)
        fast_s = time.perf_counter() - start
        engine_peak = peak_memory_mb(device)  # before the slow path runs: the engine's own peak
        del cache
        gc.collect()

        slow_loss = reference_loss_fn(problem)
        n_slow = min(len(sample), max(5, n_tests // 10))  # the slow path is timed on a subsample
        slow_sample = sample[:: max(1, len(sample) // n_slow)][:n_slow]
        sync(device)
        start = time.perf_counter()
        slow_deltas = []
        for e in slow_sample:
            mask = full.clone()
            mask[e] = 0
            slow_deltas.append(slow_loss(mask, 0) - base)
        sync(device)
        slow_s = time.perf_counter() - start
    fast_by_edge = dict(zip(sample, fast_deltas))
    same = all((fast_by_edge[e] < tau) == (d < tau) for e, d in zip(slow_sample, slow_deltas))
    return dict(case=name, edges=graph.n_edges, tests=len(sample), slow_s=slow_s, fast_s=fast_s,
                slow_per_test=slow_s / len(slow_sample), fast_per_test=fast_s / len(sample), same=same,
                peak_mb=engine_peak)


def gpt2_shaped(device: str) -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
                                  n_ctx=1024, act_fn="gelu_new", normalization_type="LNPre", device=device, seed=0)
    return HookedTransformer(cfg).eval().requires_grad_(False)


def induction_model(device: str) -> tuple[HookedTransformer, str]:
    try:
        task = build_task("induction", seed=0, device=device, model={"name": "induction_2l"})
        return task, "trained induction_2l"
    except Exception:  # the trained model is not available: same shape, random weights
        cfg = HookedTransformerConfig(n_layers=2, d_model=256, n_heads=8, d_head=32, attn_only=True, d_vocab=2000,
                                      n_ctx=64, act_fn="gelu", normalization_type="LNPre", device=device, seed=0)
        model = HookedTransformer(cfg).eval().requires_grad_(False)
        return random_task(model, batch=50, seq=40), "random 2L attn-only"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--cases", nargs="+", default=["tracr_reverse", "induction", "gpt2"])
    parser.add_argument("--tests", type=int, default=240, help="sampled edge tests on the GPT-2-shaped model")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    rows = []
    for case in args.cases:
        if case == "tracr_reverse":
            task = build_task("tracr_reverse", seed=0, device=device)
            graph = Graph(Architecture.from_config(task.model.cfg, split_embed=True))
            rows.append(whole_run(case, Problem(task, graph, "zero", task.metric(None), progress=False), 0.001, device))
        elif case == "induction":
            task, label = induction_model(device)
            graph = Graph(Architecture.from_config(task.model.cfg))
            problem = Problem(task, graph, "corrupted", task.metric("kl"), progress=False)
            rows.append(whole_run(f"induction ({label})", problem, 0.01, device))
            del task, problem
        elif case == "gpt2":
            model = gpt2_shaped(device)
            task = random_task(model, args.batch, args.seq)
            graph = Graph(Architecture.from_config(model.cfg))
            problem = Problem(task, graph, "corrupted", KL, progress=False)
            rows.append(sampled_tests(f"gpt2-shaped {args.batch}x{args.seq}", problem, args.tests, device, 1e-3))
        else:
            sys.exit(f"unknown case {case!r}")
        print(format_row(rows[-1]), flush=True)

    print()
    print(f"device: {device} ({torch.cuda.get_device_name() if device == 'cuda' else f'{torch.get_num_threads()} CPU threads'}), torch {torch.__version__}")
    header = f"{'case':<34} {'edges':>6} {'tests':>6} {'slow s/test':>12} {'engine s/test':>14} {'speed-up':>9} {'peak MB':>8}  same edges"
    print("(peak MB: the process's peak memory before the slow path ran, i.e. the engine's)")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(format_row(row))


def format_row(row: dict) -> str:
    ratio = row["slow_per_test"] / row["fast_per_test"]
    return (f"{row['case']:<34} {row['edges']:>6} {row['tests']:>6} {row['slow_per_test']:>12.5f} "
            f"{row['fast_per_test']:>14.5f} {ratio:>8.1f}x {row['peak_mb']:>8.0f}  {'yes' if row['same'] else 'NO'}"
            f"   (whole: slow {row['slow_s']:.2f} s, engine {row['fast_s']:.2f} s)")


if __name__ == "__main__":
    main()
