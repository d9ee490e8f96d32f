"""Train ``induction_2l``: a 2-layer, 8-head attention-only transformer that learns induction.

    python scripts/train_induction.py            # a few minutes on 2 CPU cores; writes the weights file

It trains on sequences of random tokens in which one span appears twice (the only predictable tokens
are the second copy's), until the model predicts a repeated span clearly better than its first copy,
and writes ``src/circuitfind/models/weights/induction_2l.pt`` with what it measured:

    loss_first_half      mean next-token loss on BOS + s + s over the first copy of s (chance: ln V)
    loss_repeated_half   the same over the second copy (the induction positions)
    induction_head_score per head, the mean attention from a second-copy token to the token after its
                         first occurrence (1 for a perfect induction head)

Seeded: the same seed, torch version and thread count give the same weights.  With other jobs on
the cores, ``--threads 1`` is several times faster than torch's default.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

from circuitfind.models import training
from circuitfind.models.shipped import shipped_weights_path
from circuitfind.tasks.induction import repeated_span_tokens

NAME = "induction_2l"
BOS = 0  # token 0 starts every sequence; ordinary tokens are 1 .. d_vocab - 1
FIRST_TOKEN = 1
ARCHITECTURE = dict(
    n_layers=2, n_heads=8, d_model=128, d_head=16, n_ctx=64, d_vocab=512, attn_only=True,
    normalization_type="LN", positional_embedding_type="standard", act_fn=None,
)


def train(seed: int, steps: int, batch: int, lr: float, min_span: int, target_ratio: float, log_every: int):
    """Train on repeated-span batches until the repeated half's loss is below ``target_ratio`` of the
    first half's (or ``steps``); the loop is ``circuitfind.models.training.train``'s."""
    seq_len, max_span = ARCHITECTURE["n_ctx"], (ARCHITECTURE["n_ctx"] - 1) // 2
    token_pool = torch.arange(FIRST_TOKEN, ARCHITECTURE["d_vocab"])

    def next_batch(generator: torch.Generator) -> torch.Tensor:
        span_lens = torch.randint(min_span, max_span + 1, (batch,), generator=generator)
        return repeated_span_tokens(batch, seq_len, span_lens, token_pool, BOS, generator)[0]

    def done(measured: dict) -> bool:
        return measured["loss_repeated_half"] / measured["loss_first_half"] < target_ratio

    return training.train(NAME, ARCHITECTURE, seed, steps, lr, next_batch,
                          lambda model, generator: training.measure_induction(model, 256, generator, BOS, FIRST_TOKEN), done, log_every)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3000, help="at most this many steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--min-span", type=int, default=4, help="shortest repeated span in training data")
    parser.add_argument("--target-ratio", type=float, default=0.05,
                        help="stop once the repeated-half loss is below this fraction of the first half's")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is fastest when other jobs share the cores)")
    parser.add_argument("--out", type=pathlib.Path, default=shipped_weights_path(NAME))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, measured, steps_run = train(args.seed, args.steps, args.batch, args.lr, args.min_span,
                                       args.target_ratio, args.log_every)
    ratio = measured["loss_repeated_half"] / measured["loss_first_half"]
    if ratio >= 0.5:
        print(f"no clear induction effect after {steps_run} steps (repeated/first loss ratio {ratio:.2f}); "
              "weights not written", file=sys.stderr)
        return 1
    training.save_shipped(
        args.out, NAME, ARCHITECTURE, model, bos=BOS, first_token=FIRST_TOKEN,
        training=dict(seed=args.seed, steps=steps_run, batch=args.batch, lr=args.lr, min_span=args.min_span,
                      threads=torch.get_num_threads(), torch_version=str(torch.__version__)),
        measured=measured,
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB): loss first half "
          f"{measured['loss_first_half']:.3f}, repeated half {measured['loss_repeated_half']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
