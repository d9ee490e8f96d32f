"""``threads=auto`` against one thread and torch's default, on a quiet machine and beside busy loops.

    python benchmarks/threads_auto.py                  # both cases, load 0 and 4 busy loops (a few minutes)
    python benchmarks/threads_auto.py --busy 4 --edge-tests 0 --repeats 3   # uncapped runs, best of 3

Cases (the README's lines)
  pairs      task=pairs task.path=examples/ioi_pairs.csv metric=logit_diff tau=0.0001
             model.pretrained=false model.n_layers=2 model.n_heads=4 model.d_model=64
             (ACDC on a random 2-layer GPT-2: 6.6M parameters, nearly all vocabulary; tiny ops)
  induction  task=induction (ACDC on the shipped induction_2l, 50 prompts x 48 tokens x d_model 256),
             capped at --edge-tests edge tests (0: the whole run) to keep the table to minutes

Each case runs in this process through ``pipeline.run`` (a fresh run folder, ``draw=false``) with
``threads=1``, ``threads=<cores>`` (torch's default: one thread per core) and ``threads=auto``, in
``--repeats`` interleaved rounds, each in another order (each cell: its fastest), first on
the machine as it is, then with ``--busy`` processes of ``while True: pass`` started beside it (the
"loaded" rows).  The time is the run's caches + method + evaluation phases (``summary.json``
timings: where the thread count applies; the model's build is the same for all).  ``auto/best`` is
auto's time over the best of threads=1 and torch's default; the bar is 1.5.  ``/proc/loadavg`` is
printed beside each block.  OMP_NUM_THREADS is dropped before torch is imported, so that torch's
default is one thread per core as a user's would be.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.pop("OMP_NUM_THREADS", None)  # torch's default as a user gets it: one thread per core
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message="HookedTransformer is deprecated")

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "pairs": ["task=pairs", f"task.path={ROOT / 'examples' / 'ioi_pairs.csv'}", "metric=logit_diff", "tau=0.0001",
              "model.pretrained=false", "model.n_layers=2", "model.n_heads=4", "model.d_model=64"],
    "induction": ["task=induction"],
}
PHASES = ("caches", "method", "evaluation")


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def timed_run(overrides: list[str], threads) -> tuple[float, dict]:
    from circuitfind.runs.pipeline import compose_config, run

    cfg = compose_config(*overrides, f"threads={threads}", "progress=false", "draw=false", "force=true")
    with tempfile.TemporaryDirectory() as folder:
        summary = run(cfg, Path(folder))
    return sum(summary["timings"].get(p, 0.0) for p in PHASES), summary["threads"]


def busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--busy", type=int, default=4, help="busy loops beside the loaded rows (0: quiet rows only)")
    parser.add_argument("--edge-tests", type=int, default=60, help="cap on induction's ACDC edge tests (0: none)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the three settings; each cell shows its "
                                                               "fastest")
    args = parser.parse_args()
    logging.getLogger("circuitfind").setLevel(logging.WARNING)  # the table, not each run's phases

    import torch

    cores = torch.get_num_threads()
    print(f"torch {torch.__version__}, default threads {cores}, cores {os.cpu_count()}")
    rows = []
    loads = [0] + ([args.busy] if args.busy else [])
    for case in args.cases:
        overrides = list(CASES[case])
        if case == "induction" and args.edge_tests:
            overrides.append(f"method.max_edge_tests={args.edge_tests}")
        timed_run(overrides + ["method.max_edge_tests=5"] if case == "induction" else overrides, 1)  # warm-up
        for busy in loads:
            loops = busy_loops(busy)
            try:
                time.sleep(3 if busy else 0)  # the loops are running before the first reading
                before = loadavg()
                cell = {}
                settings = [1, cores, "auto"]
                for r in range(args.repeats):  # rounds of all three, so that a change of load hits each,
                    for threads in settings[r % 3:] + settings[:r % 3]:  # each round in another order
                        seconds, record = timed_run(overrides, threads)
                        if threads not in cell or seconds < cell[threads][0]:
                            cell[threads] = (seconds, record)
                after = loadavg()
            finally:
                for loop in loops:
                    loop.kill()
                for loop in loops:
                    loop.wait()
            rows.append((case, busy, cell, before, after))
            auto_s, auto_record = cell["auto"]
            ratio = auto_s / min(cell[1][0], cell[cores][0])
            print(f"{case:9s} busy {busy}: threads=1 {cell[1][0]:7.2f} s, threads={cores} {cell[cores][0]:7.2f} s, "
                  f"auto ({auto_record['used']}) {auto_s:7.2f} s, auto/best {ratio:.2f}   "
                  f"[loadavg before {before} | after {after}]", flush=True)
            print(f"          auto's reason: {auto_record['reason']}", flush=True)

    print()
    print(f"| case | busy loops | loadavg (before) | threads=1 (s) | threads={cores} (s) | auto (s) | auto used | "
          "auto/best |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    worst = 0.0
    for case, busy, cell, before, _ in rows:
        ratio = cell["auto"][0] / min(cell[1][0], cell[cores][0])
        worst = max(worst, ratio)
        print(f"| {case} | {busy} | {' '.join(before.split()[:3])} | {cell[1][0]:.2f} | {cell[cores][0]:.2f} | "
              f"{cell['auto'][0]:.2f} | {cell['auto'][1]['used']} | {ratio:.2f} |")
    print(f"\nworst auto/best: {worst:.2f} (bar: 1.5)")


if __name__ == "__main__":
    main()
