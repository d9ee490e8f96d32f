"""What a ranking method's curve costs beside its scores, for the three runs the README times.

    python benchmarks/curve_cost.py                      # all three cases, EAP
    python benchmarks/curve_cost.py --cases induction --method eap_ig

Each case is one ``circuitfind`` run (a fresh run folder under a temporary directory); from its
``summary.json`` it prints the method's score time (``scores_s``), the curve's patched forwards and
seconds on the validation split (k=auto) and on the test split (MIB's ten fractions), and the ratio
curve / scores, with ``/proc/loadavg`` before and after (the machine's load skews every timing).
``caches`` is the run's caches phase: the ablated run of the validation split, which EAP needs
beside its gradient pass (the ``eap`` library counts that forward in its scores), and an unpatched
run, which it does not; the last column is curve / (caches + scores), a little kinder to the curve
than EAP's own count, where curve / scores is strict.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = {
    "induction": ["task=induction"],
    "ioi": ["task=ioi", "model.pretrained=false"],
    "pythia": ["task=induction", "model=pythia-70m", "model.pretrained=false"],
}


def load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ")[0]
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--method", default="eap")
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    print(f"{'case':10} {'scores_s':>9} {'val fwd':>7} {'val s':>7} {'test fwd':>8} {'test s':>7} {'curve/scores':>12} "
          f"{'caches_s':>8} {'/(c+s)':>6}  load")
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            folder = Path(tmp) / case
            before = load()
            subprocess.run([sys.executable, "-m", "circuitfind.cli", *CASES[case], f"method={args.method}",
                            "progress=false", "draw=false", f"hydra.run.dir={folder}"],
                           env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            summary = json.loads((folder / "summary.json").read_text())
            d, caches = summary["method_details"], summary["timings"]["caches"]
            curve = d["curve_s"] + d["curve_test_s"]
            print(f"{case:10} {d['scores_s']:9.3f} {d['curve_forwards']:7d} {d['curve_s']:7.3f} "
                  f"{d['curve_test_forwards']:8d} {d['curve_test_s']:7.3f} {curve / d['scores_s']:12.2f} "
                  f"{caches:8.3f} {curve / (caches + d['scores_s']):6.2f}  {before} -> {load()}", flush=True)


if __name__ == "__main__":
    main()
