"""The GPU check: one command that a person with one GPU for ten minutes can run.

    python benchmarks/gpu_check.py                      # make gpu-check: everything, on cuda
    python benchmarks/gpu_check.py --device cpu --quick # the same checks, tiny, on the CPU (the test suite)

It prints one table (and writes it as JSON with ``--out``):

  engine = reference   the engine's logits against the TransformerLens hook reference on random
                       binary and fractional masks, tiny random models (plain, split embeddings,
                       attention-only), every ablation: float64 must agree to 1e-9, float32 to 1e-4
                       (relative to the logits' scale)
  ACDC cpu = device    ACDC's kept edges from full runs through the pipeline (tracr-reverse and the
                       shipped induction model), once on the CPU and once on the device
  s/edge test          a random GPT-2-shaped model (12 x 12 heads, d_model 768, vocab 50,257), 50
                       prompts x 16 tokens: seconds per edge test with one test per forward and with
                       batched tests (``batch_edges=auto``: the next candidates into a receiver, removed
                       cumulatively, as ACDC's plain plan)
  IOI projection       the same model at IOI's size (100 prompts x 15 tokens, 32,923 edges): seconds per
                       edge test, and that times the graph's edges (ACDC tests nearly every edge once;
                       edges of receivers that feed nothing are dropped untested, so this is an upper
                       bound), batched and not
  peak memory          the device's peak allocated memory over the whole check

Each line says PASS/FAIL where there is a criterion; the exit code is 1 if any check failed.
Budget: meant to finish well inside 8 minutes on one GPU; it has not run on a GPU yet (none was
lent to the sessions that wrote it). ``--quick`` on 1 CPU thread takes about 20 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message="HookedTransformer is deprecated")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from circuitfind.engine import PatchEngine, make_ablation  # noqa: E402
from circuitfind.core.graph import Architecture, EdgeMask, Graph  # noqa: E402
from circuitfind.engine.reference import reference_ablation, reference_logits  # noqa: E402

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---- 1. the engine against the hook reference ------------------------------------------------
def tiny_model(device: str, dtype: torch.dtype, seed: int, attn_only: bool = False) -> HookedTransformer:
    """A random model with random biases and layer-norm weights (TransformerLens initialises them to 0
    and 1, which would hide mistakes)."""
    cfg = HookedTransformerConfig(n_layers=2, n_heads=3, d_model=24, d_head=8, d_mlp=None if attn_only else 48,
                                  attn_only=attn_only, d_vocab=40, n_ctx=16, act_fn="gelu",
                                  normalization_type="LN", dtype=dtype, seed=seed, device=device)
    model = HookedTransformer(cfg)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith((".b_Q", ".b_K", ".b_V", ".b_O", ".b_in", ".b_out", ".b", "b_U")):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator, dtype=dtype).to(device))
            elif name.endswith(".w"):
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator, dtype=dtype).to(device))
    return model.eval().requires_grad_(False)


def engine_vs_reference(device: str, dtype: torch.dtype, n_masks: int) -> float:
    """The largest |engine - reference| over models, ablations and masks, relative to the logits' scale."""
    worst = 0.0
    cases = [(False, False), (True, False), (False, True)]  # (split embeddings, attention only)
    for seed, (split, attn_only) in enumerate(cases):
        model = tiny_model(device, dtype, seed, attn_only)
        graph = Graph(Architecture.from_config(model.cfg, split_embed=split), "qkv")
        g = torch.Generator().manual_seed(seed)
        clean = torch.randint(0, model.cfg.d_vocab, (4, 6), generator=g).to(device)
        corrupted = torch.randint(0, model.cfg.d_vocab, (4, 6), generator=g).to(device)
        for kind in ("corrupted", "zero", "mean"):
            engine = PatchEngine(model, graph, clean, make_ablation(kind, model, graph, clean, corrupted))
            ablated = reference_ablation(model, corrupted, kind)
            for i in range(n_masks):
                values = torch.rand(graph.n_edges, generator=g, dtype=torch.float64)
                values = values.round() if i % 2 == 0 else values  # binary, then fractional
                mask = EdgeMask(graph, values.to(dtype))
                with torch.no_grad():
                    fast = engine.logits(mask)
                    slow = reference_logits(model, graph, clean, ablated, mask)
                scale = max(float(slow.abs().max()), 1.0)
                worst = max(worst, float((fast - slow).abs().max()) / scale)
    return worst


# ---- 2. ACDC on the CPU and on the device ----------------------------------------------------
def kept_edges(overrides: list[str], device: str, folder: Path) -> list[str]:
    """ACDC's kept edges from a full pipeline run (the run folder's edges.csv)."""
    from circuitfind.runs.pipeline import compose_config, run

    run(compose_config(*overrides, f"device={device}", "progress=false"), folder)
    edges = pd.read_csv(folder / "edges.csv")
    return sorted(edges.loc[edges["kept"].astype(bool), "edge"])


def acdc_cpu_vs_device(device: str, quick: bool) -> dict[str, tuple[bool, int, int]]:
    cases = {"tracr_reverse zero": ["task=tracr_reverse", "corruption=zero"],
             "tracr_reverse corrupted": ["task=tracr_reverse", "corruption=corrupted"]}
    if not quick:
        cases["induction corrupted"] = ["task=induction", "tau=0.01"]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in cases.items():
            on_cpu = kept_edges(overrides, "cpu", Path(tmp) / f"{name}-cpu")
            on_device = kept_edges(overrides, device, Path(tmp) / f"{name}-{device}")
            out[name] = (on_cpu == on_device, len(on_cpu), len(on_device))
    return out


# ---- 3. seconds per edge test on a GPT-2-shaped model ---------------------------------------
def gpt2_shaped(device: str, d_vocab: int = 50257) -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=d_vocab,
                                  n_ctx=1024, act_fn="gelu_new", normalization_type="LNPre", device=device, seed=0)
    return HookedTransformer(cfg).eval().requires_grad_(False)


def small_shaped(device: str) -> HookedTransformer:
    """--quick: a model small enough for the CPU test suite, with the same code path."""
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=100, n_ctx=32,
                                  act_fn="gelu_new", normalization_type="LNPre", device=device, seed=0)
    return HookedTransformer(cfg).eval().requires_grad_(False)


def cumulative_removals(graph: Graph, edge: int, k: int) -> torch.Tensor:
    """[k', n_edges]: the circuits of ``edge`` and the next k-1 edges into its receiver, each removing
    every one before it too (ACDC's plain batch when every tested edge is removed)."""
    incoming = graph.incoming[graph.edges[edge].receiver]
    edges = incoming[incoming.index(edge):][:k]
    masks = torch.ones(len(edges), graph.n_edges)
    for j in range(len(edges)):
        masks[j, edges[:j + 1]] = 0
    return masks


def seconds_per_test(model: HookedTransformer, n_prompts: int, seq: int, n_tests: int, device: str,
                     batch_edges: int | None) -> tuple[float, int]:
    """Seconds per edge test over an evenly spread sample of edges (each restarted at its stage from
    one cached run); with ``batch_edges`` the next candidates run in the same forward.
    Returns (seconds per test, candidates per forward)."""
    graph = Graph(Architecture.from_config(model.cfg), "qkv")
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, model.cfg.d_vocab, (n_prompts, seq), generator=g).to(device)
    corrupted = torch.randint(0, model.cfg.d_vocab, (n_prompts, seq), generator=g).to(device)
    positions = torch.full((n_prompts, 1), seq - 1, device=device)
    engine = PatchEngine(model, graph, clean, make_ablation("corrupted", model, graph, clean, corrupted))
    order = list(range(graph.n_edges))  # ACDC visits edges by id
    sample = [order[i] for i in torch.linspace(0, len(order) - 1, n_tests).round().long().tolist()]
    with torch.no_grad():
        logits, cache = engine.run(graph.full_mask().values.float(), positions, record=True)
        k = 1
        if batch_edges is None:
            from circuitfind.methods.acdc import auto_batch_edges
            k = auto_batch_edges(cache.diff, logits)
        else:
            k = batch_edges

        def test(edge: int) -> int:
            masks = cumulative_removals(graph, edge, k)
            out, _ = engine.run(masks, positions, start_stage=graph.edges[edge].stage, cache=cache)
            out.log_softmax(-1)  # the metric's work (KL reads log-probabilities)
            return len(masks)

        test(sample[0])  # warm-up: allocations, kernels
        sync(device)
        start = time.perf_counter()
        n_done = sum(test(e) for e in sample)
        sync(device)
    return (time.perf_counter() - start) / n_done, k


# ---- the table -------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script itself, on any device")
    parser.add_argument("--tests", type=int, default=48, help="sampled edge tests per timing")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible to torch (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rows: list[dict] = []

    def row(check: str, result: str, passed: bool | None = None, seconds: float | None = None) -> None:
        rows.append(dict(check=check, result=result, status={True: "PASS", False: "FAIL", None: ""}[passed],
                         seconds=None if seconds is None else round(seconds, 1)))
        print(f"{check:<52} {result:<64} {rows[-1]['status']}", flush=True)

    started = time.perf_counter()
    for dtype in (torch.float64, torch.float32):
        t = time.perf_counter()
        worst = engine_vs_reference(device, dtype, n_masks=2 if args.quick else 6)
        row(f"engine = reference ({str(dtype)[6:]}, {device})", f"max rel. error {worst:.1e} (tol {TOLERANCE[dtype]:.0e})",
            worst <= TOLERANCE[dtype], time.perf_counter() - t)

    t = time.perf_counter()
    for name, (same, n_cpu, n_device) in acdc_cpu_vs_device(device, args.quick).items():
        row(f"ACDC kept edges cpu = {device}: {name}", f"{n_cpu} on cpu, {n_device} on {device}", same)
    rows[-1]["seconds"] = round(time.perf_counter() - t, 1)

    n_tests = 4 if args.quick else args.tests
    build = small_shaped if args.quick else gpt2_shaped
    model = build(device)
    for label, n_prompts, seq, edges_label in (("GPT-2-shaped 50x16", 50, 16, None),
                                               ("IOI-sized 100x15", 100, 15, "IOI")):
        graph_edges = Graph(Architecture.from_config(model.cfg), "qkv").n_edges
        for batch_edges in (1, None):
            t = time.perf_counter()
            per_test, k = seconds_per_test(model, n_prompts, seq, n_tests, device, batch_edges)
            what = f"{per_test * 1e3:.2f} ms/test (k={k})"
            if edges_label:
                what += f", whole run <= {per_test * graph_edges / 60:.1f} min for {graph_edges} edges"
            row(f"s/edge test {label}, {'batch 1' if batch_edges == 1 else 'batched'}", what,
                seconds=time.perf_counter() - t)
    del model

    row(f"peak memory ({device})", f"{peak_memory_mb(device):.0f} MB")
    device_name = torch.cuda.get_device_name() if device.startswith("cuda") else f"{torch.get_num_threads()} CPU threads"
    print(f"\ndevice: {device_name}, torch {torch.__version__}, total {time.perf_counter() - started:.0f} s"
          f"{', quick sizes' if args.quick else ''}")
    if args.out:
        args.out.write_text(json.dumps(dict(device=device_name, torch=torch.__version__, quick=args.quick,
                                            rows=rows), indent=2))
    return 1 if any(r["status"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
