"""ACDC speed: the slow reference path against the patching engine, in one process.

    python benchmarks/acdc_speed.py                 # all three cases on the CPU
    python benchmarks/acdc_speed.py --device cuda --cases gpt2
    python benchmarks/acdc_speed.py --tests 300 --batch 50 --seq 16 --batch-edges 8

Cases
  tracr_reverse  the whole ACDC run (zero ablation, tau 0.001) on both paths
  induction      the whole ACDC run (task=induction: the shipped 2-layer attention-only model,
                 corrupted ablation, tau 0.01)
  gpt2           a random GPT-2-shaped model (12 layers, d_model 768, 12 heads, vocab 50,257),
                 50 prompts x 16 tokens: a fixed sample of edge tests spread evenly over all
                 receivers (a whole run is hours on a CPU), each removing one edge from the full
                 circuit, as ACDC's first pass over a receiver does

The slow path is ``reference.py``: TransformerLens hooks with split q/k/v inputs and per-head results,
one full forward per edge test.  The engine restarts each test at the receiver's layer from a cached
run, once with one test per forward (batch 1) and once with ACDC's batched edge tests (the next k
candidate removals into a receiver in one forward; ``batch_edges=auto`` unless --batch-edges).  For
the sampled GPT-2 tests a batch is the sampled edge and the k-1 edges after it in its receiver,
removed cumulatively, so "batched s/test" is the throughput when every one of them is removed (an
upper bound on what a whole run gains).  "same edges" compares the keep/remove decision of every
tested edge at the same tau, for both engine settings against the slow path.
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
from circuitfind.core.graph import Architecture, EdgeMask, Graph  # noqa: E402
from circuitfind.methods import Problem, get_method  # noqa: E402
from circuitfind.methods.acdc import Step, acdc_search, auto_batch_edges, candidate_masks  # noqa: E402
from circuitfind.core.metrics import KL  # noqa: E402
from circuitfind.runs.pipeline import build_problem, compose_config  # noqa: E402
from circuitfind.engine.reference import reference_ablation, reference_logits  # noqa: E402
from circuitfind.tasks import TaskData  # noqa: E402
from circuitfind.tasks.base import Task  # noqa: E402


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reference_loss_fn(problem: Problem):
    """ACDC's loss with one full hooked forward per candidate circuit (the slow path)."""
    task, graph, data = problem.task, problem.graph, problem.task.validation
    ablated = reference_ablation(task.model, data.corrupted, problem.corruption)

    def losses(masks: torch.Tensor, stage: int) -> list[float]:
        out = []
        with torch.no_grad():
            for mask in masks:
                logits = reference_logits(task.model, graph, data.clean, ablated, EdgeMask(graph, mask))
                out.append(float(problem.loss(gather_positions(logits, data.positions))))
        return out

    return losses


def timed(device: str, fn):
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def whole_run(name: str, problem: Problem, tau: float, device: str, batch_edges) -> dict:
    """Both paths run all of ACDC (the engine with and without batched edge tests); one table row."""
    acdc = get_method("acdc")
    problem.clean_logits("validation")  # set-up both paths share (data, ablation) stays out of the timings
    slow_losses = reference_loss_fn(problem)
    sequential, sequential_s = timed(device, lambda: acdc(problem, tau=tau, batch_edges=1))
    batched, batched_s = timed(device, lambda: acdc(problem, tau=tau, batch_edges=batch_edges))
    engine_peak = peak_memory_mb(device)
    slow, slow_s = timed(device, lambda: acdc_search(problem.graph, slow_losses, tau, progress=False,
                                                     dtype=problem.task.model.cfg.dtype))
    n_tests = len(slow.trace)
    same = sequential.circuit.kept_names() == slow.circuit.kept_names() == batched.circuit.kept_names()
    return dict(case=name, edges=problem.graph.n_edges, tests=n_tests, slow_s=slow_s, fast_s=sequential_s,
                batched_s=batched_s, slow_per_test=slow_s / n_tests, fast_per_test=sequential_s / n_tests,
                batched_per_test=batched_s / n_tests, same=same, peak_mb=engine_peak,
                batch_edges=batched.details["batch_edges"], forwards=batched.details["n_test_forwards"])


def random_task(model: HookedTransformer, batch: int, seq: int, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    device = model.W_E.device
    clean = torch.randint(0, model.cfg.d_vocab, (batch, seq), generator=g).to(device)
    corrupted = torch.randint(0, model.cfg.d_vocab, (batch, seq), generator=g).to(device)
    positions = torch.full((batch, 1), seq - 1, device=device)
    data = TaskData(clean, corrupted, positions)
    return Task("random", model, data, data, {"kl": KL}, "kl")


def sampled_tests(name: str, problem: Problem, n_tests: int, device: str, tau: float, batch_edges) -> dict:
    """Time a fixed, evenly spread sample of single-edge tests on both paths, and the engine's
    batched tests: each sampled edge with the k-1 edges after it in its receiver, removed cumulatively."""
    graph = problem.graph
    order = list(range(graph.n_edges))  # ACDC visits edges by id
    sample = [order[i] for i in torch.linspace(0, len(order) - 1, n_tests).round().long().tolist()]
    engine, data = problem.engine(), problem.data("validation")
    full = torch.ones(graph.n_edges, dtype=engine.dtype)  # masks live on the CPU, as in ACDC; the engine moves them
    with torch.no_grad():
        logits, cache = engine.run(full, data.positions, record=True)
        base = float(problem.loss(logits))
        k = auto_batch_edges(cache.diff, logits) if batch_edges == "auto" else batch_edges

        def fast_tests(e: int, k: int) -> list[float]:
            incoming = graph.incoming[graph.edges[e].receiver]
            steps = [Step(edge, []) for edge in incoming[incoming.index(e):][:k]]
            masks = candidate_masks(full, steps, k, keep_rate=0.0)  # ACDC's plain plan: removal j removes 1..j
            out, _ = engine.run(masks, data.positions, start_stage=graph.edges[e].stage, cache=cache)
            return [float(problem.loss(candidate)) - base for candidate in out]

        fast_tests(sample[0], k)  # warm-up (allocations, kernels)
        single, fast_s = timed(device, lambda: [fast_tests(e, 1)[0] for e in sample])
        batched, batched_s = timed(device, lambda: [fast_tests(e, k) for e in sample])
        n_batched = sum(len(b) for b in batched)
        engine_peak = peak_memory_mb(device)  # before the slow path runs: the engine's own peak
        del cache
        gc.collect()

        slow_loss = reference_loss_fn(problem)
        n_slow = min(len(sample), max(5, n_tests // 10))  # the slow path is timed on a subsample
        slow_sample = sample[:: max(1, len(sample) // n_slow)][:n_slow]

        def slow_tests() -> list[float]:
            masks = full.repeat(len(slow_sample), 1)
            masks[range(len(slow_sample)), slow_sample] = 0
            return [loss - base for loss in slow_loss(masks, 0)]

        slow_deltas, slow_s = timed(device, slow_tests)
    single_by_edge = dict(zip(sample, single))
    batched_by_edge = {e: b[0] for e, b in zip(sample, batched)}  # a batch's first candidate is the single test
    same = all((single_by_edge[e] < tau) == (batched_by_edge[e] < tau) == (d < tau)
               for e, d in zip(slow_sample, slow_deltas))
    return dict(case=name, edges=graph.n_edges, tests=len(sample), slow_s=slow_s, fast_s=fast_s, batched_s=batched_s,
                slow_per_test=slow_s / len(slow_sample), fast_per_test=fast_s / len(sample),
                batched_per_test=batched_s / n_batched, same=same, peak_mb=engine_peak, batch_edges=k,
                forwards=len(sample))


def gpt2_shaped(device: str) -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
                                  n_ctx=1024, act_fn="gelu_new", normalization_type="LNPre", device=device, seed=0)
    return HookedTransformer(cfg).eval().requires_grad_(False)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--cases", nargs="+", default=["tracr_reverse", "induction", "gpt2"])
    parser.add_argument("--tests", type=int, default=240, help="sampled edge tests on the GPT-2-shaped model")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--batch-edges", default="auto", help="edge tests per batched forward (auto or an integer)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    batch_edges = args.batch_edges if args.batch_edges == "auto" else int(args.batch_edges)
    rows = []
    for case in args.cases:
        if case == "tracr_reverse":
            cfg = compose_config("task=tracr_reverse", "corruption=zero", f"device={device}", "progress=false")
            rows.append(whole_run(case, build_problem(cfg), 0.001, device, batch_edges))
        elif case == "induction":
            cfg = compose_config("task=induction", f"device={device}", "progress=false")
            rows.append(whole_run("induction (trained 2L)", build_problem(cfg), 0.01, device, batch_edges))
        elif case == "gpt2":
            model = gpt2_shaped(device)
            task = random_task(model, args.batch, args.seq)
            graph = Graph(Architecture.from_config(model.cfg))
            problem = Problem(task, graph, "corrupted", KL, progress=False)
            rows.append(sampled_tests(f"gpt2-shaped {args.batch}x{args.seq}", problem, args.tests, device, 1e-3,
                                      batch_edges))
        else:
            sys.exit(f"unknown case {case!r}")
        print(format_row(rows[-1]), flush=True)

    print()
    print(f"device: {device} ({torch.cuda.get_device_name() if device == 'cuda' else f'{torch.get_num_threads()} CPU threads'}), torch {torch.__version__}")
    print("(s/test: seconds per edge test; batch 1: one test per engine forward; batched: k tests per forward;")
    print(" peak MB: the process's peak memory before the slow path ran, i.e. the engine's)")
    header = (f"{'case':<26} {'edges':>6} {'tests':>6} {'slow s/test':>12} {'batch 1':>9} {'batched':>9} {'k':>3} "
              f"{'speed-up 1':>10} {'batched':>8} {'peak MB':>8}  same edges")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(format_row(row))


def format_row(row: dict) -> str:
    ratio = row["slow_per_test"] / row["fast_per_test"]
    batched_ratio = row["slow_per_test"] / row["batched_per_test"]
    return (f"{row['case']:<26} {row['edges']:>6} {row['tests']:>6} {row['slow_per_test']:>12.5f} "
            f"{row['fast_per_test']:>9.5f} {row['batched_per_test']:>9.5f} {row['batch_edges']:>3} "
            f"{ratio:>9.1f}x {batched_ratio:>7.1f}x {row['peak_mb']:>8.0f}  {'yes' if row['same'] else 'NO'}"
            f"   (whole: slow {row['slow_s']:.3f} s, engine {row['fast_s']:.3f} s, batched {row['batched_s']:.3f} s"
            f" in {row['forwards']} forwards)")


if __name__ == "__main__":
    main()
