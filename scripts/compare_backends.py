"""The shipped models' logits under TransformerLens 3.9 (HookedTransformer) and 4.3 (a native bridge
holding the same weights), compared: run it once in each environment.

    .venv/bin/python scripts/compare_backends.py --save tl3_logits.pt         # TransformerLens 3.9
    .venv-tl4/bin/python scripts/compare_backends.py --compare tl3_logits.pt  # TransformerLens 4.3

Each model sees three seeded random prompts (tracr programs: their full context; the others: 20
tokens), in float32.  ``--compare`` prints, per model, the largest absolute difference of the logits.
"""

from __future__ import annotations

import argparse
import sys

import torch

from circuitfind.models.loading import load_model
from circuitfind.models.shipped import shipped_weights_path
from circuitfind.models.tracr import TRACR_PROGRAMS, load_tracr_model
from circuitfind.models.view import describe

SHIPPED = ("induction_2l", "algo_4l")


def model_of(name: str):
    return load_model({"kind": "shipped", "name": name}) if name in SHIPPED else load_tracr_model(name).model


def logits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for name in (*SHIPPED, *TRACR_PROGRAMS):
        if name in SHIPPED and not shipped_weights_path(name).is_file():
            continue
        model = model_of(name)
        n_pos = 20 if name in SHIPPED else model.cfg.n_ctx
        tokens = torch.randint(0, model.cfg.d_vocab, (3, n_pos), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            out[name] = (tokens, model(tokens))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", help="write this environment's logits here")
    group.add_argument("--compare", help="compare this environment's logits with those saved here")
    args = parser.parse_args(argv)
    print(describe())
    if args.save:
        torch.save(logits(), args.save)
        return 0
    saved = torch.load(args.compare, weights_only=True)
    worst = 0.0
    for name, (tokens, theirs) in saved.items():
        with torch.no_grad():
            ours = model_of(name)(tokens)
        diff = (ours - theirs).abs().max().item()
        worst = max(worst, diff)
        print(f"{name:24s} max |difference| of the logits: {diff:.3g}")
    return 0 if worst == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
