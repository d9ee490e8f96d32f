"""Train ``algo_<L>l``: an L-layer, 8-head attention-only transformer on a mix of two algorithmic
tasks, where each task's circuit uses a part of the model's edges (graph=qkv: 1,377 for 4 layers),
so an exact circuit search has something to save.

    python scripts/train_algo.py --threads 1          # writes the weights file if both tasks are learned

The shipped ``algo_4l`` is this command's output (the defaults: 4 layers, d_model 64, context 32,
128 token ids, three quarters induction, lr 3e-3 with warm-up and cosine decay, 4,000 steps of 32
sequences): 493 s on one core shared with other jobs (load ~5.5; a rerun at load ~5, 178 s, gave the same
weights bit for bit), 0.36 MB; induction loss 0.18 nats
on the repeated span against 4.84 on its first copy (chance 4.83), sorting 85%.  Seven of layer 1's
eight heads are induction heads (score 0.4-0.9).  The repeated span's loss fell below half the first
copy's by step 1,400.  The shipped ``algo_6l`` is ``--layers 6`` (3,217 edges): 359 s at load ~5,
0.49 MB, induction 0.20 against 4.85 nats, sorting 88%; all eight of layer 1's heads are induction
heads (0.53-0.91).  Earlier tries did not learn induction in the time: d_model 128 and context 64
with 6 layers and 128 token ids (2,500 steps: induction loss 4.83 -> 4.15, sorting 87%) or 4 layers
and 512 token ids (2,500 steps: 6.23 -> 6.20, sorting 91%); d_model 64, context 32, 512 token ids,
lr 1e-3, induction only (4.30 against 6.24 nats at step 2,900, stopped).  ``--head-lasso 0.003`` (a
group-lasso penalty on each head's output, meant to switch unneeded heads off) learned both tasks in
3,400 steps (982 s, load ~8; induction 0.15 against 4.86 nats, sorting 91%) but still spread induction
over all eight heads of layer 1 (scores 0.39-0.86), so it is not shipped; at 0.03 induction had not
formed by step 1,700 (3.28 against 4.85 nats, stopped).  Started once induction had formed
(``--lasso-start 0.4 --stop-ratio 0``, 4,000 steps, ~900 s at load ~7) at 0.01 or 0.03, it left six of
layer 1's heads induction heads (scores 0.51-0.78; induction 0.21-0.22 nats, sorting 85%): not
shipped either.

Every training batch mixes (``--induction-fraction``) two kinds of sequences of ``n_ctx`` tokens:

    induction  BOS, random tokens in which one span appears twice (as ``scripts/train_induction.py``);
               the second copy is predictable by induction (``task=induction``'s prompts).
    sorting    BOS, then episodes  SORT x1 .. xn SEP y1 .. yn  back to back, where the y are the x
               (distinct tokens) in increasing order; the y are predictable.

The loss is next-token cross-entropy over every position (the loop is
``circuitfind.models.training.train``, shared with ``scripts/train_induction.py``).  The script writes
``src/circuitfind/models/weights/algo_<L>l.pt`` with what it measured on fresh sequences:

    loss_first_half      induction: mean loss over the first copy of a span of (n_ctx - 1) // 2 tokens
    loss_repeated_half   the same over the second copy (the induction positions)
    induction_head_score per head, the attention from a second-copy token to the token after its first
                         occurrence
    sort_accuracy        sorting: fraction of sorted tokens (y2 .. yn) predicted exactly (argmax)

Seeded: the same seed, torch version and thread count give the same weights.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

from circuitfind.models import training
from circuitfind.models.shipped import shipped_weights_path
from circuitfind.tasks.induction import repeated_span_tokens

BOS, SEP, SORT = 0, 1, 2  # special tokens; ordinary tokens are FIRST_TOKEN .. d_vocab - 1
FIRST_TOKEN = 3
SORT_VOCAB = 125  # sorting draws from the first SORT_VOCAB ordinary tokens, induction from all of them
SORT_LENGTHS = (3, 8)  # sorting episodes' lengths in training and measurement


def architecture(n_layers: int, d_model: int, n_ctx: int, d_vocab: int) -> dict:
    return dict(n_layers=n_layers, n_heads=8, d_model=d_model, d_head=d_model // 8, n_ctx=n_ctx, d_vocab=d_vocab,
                attn_only=True, normalization_type="LN", positional_embedding_type="standard", act_fn=None)


def sort_tokens(n: int, seq_len: int, min_len: int, max_len: int, generator: torch.Generator,
                d_vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, seq_len] sorting sequences (BOS, then episodes SORT x.. SEP sorted(x)..) and a boolean
    [n, seq_len] marking the tokens y2 .. yn of each complete episode (predictable from x and y1 ..)."""
    tokens = torch.full((n, seq_len), BOS, dtype=torch.long)
    sorted_pos = torch.zeros(n, seq_len, dtype=torch.bool)
    pool = min(d_vocab - FIRST_TOKEN, SORT_VOCAB)
    for row in range(n):
        at = 1
        while True:
            length = int(torch.randint(min_len, max_len + 1, (1,), generator=generator))
            if at + 2 * length + 2 > seq_len:
                # fill what is left with a shorter episode, or random tokens
                length = (seq_len - at - 2) // 2
                if length < 2:
                    tokens[row, at:] = torch.randint(FIRST_TOKEN, d_vocab, (seq_len - at,), generator=generator)
                    break
            x = FIRST_TOKEN + torch.randperm(pool, generator=generator)[:length]
            tokens[row, at] = SORT
            tokens[row, at + 1:at + 1 + length] = x
            tokens[row, at + 1 + length] = SEP
            tokens[row, at + 2 + length:at + 2 + 2 * length] = x.sort().values
            sorted_pos[row, at + 3 + length:at + 2 + 2 * length] = True
            at += 2 + 2 * length
    return tokens, sorted_pos


def measure(model, n: int, generator: torch.Generator, sorting: bool) -> dict:
    """Induction losses and head scores on BOS + s + s; sorting accuracy (when trained on sorting)."""
    measured = training.measure_induction(model, n, generator, BOS, FIRST_TOKEN)
    if sorting:
        tokens, sorted_pos = sort_tokens(n, model.cfg.n_ctx, *SORT_LENGTHS, generator, model.cfg.d_vocab)
        predicted = model(tokens)[:, :-1].argmax(-1)
        measured["sort_accuracy"] = (predicted == tokens[:, 1:])[sorted_pos[:, 1:]].float().mean().item()
    return measured


def batch_tokens(batch: int, arch: dict, generator: torch.Generator, min_span: int,
                 induction_fraction: float) -> torch.Tensor:
    n_induction = round(batch * induction_fraction)
    span_lens = torch.randint(min_span, (arch["n_ctx"] - 1) // 2 + 1, (n_induction,), generator=generator)
    induction, _ = repeated_span_tokens(n_induction, arch["n_ctx"], span_lens,
                                        torch.arange(FIRST_TOKEN, arch["d_vocab"]), BOS, generator)
    sorting, _ = sort_tokens(batch - n_induction, arch["n_ctx"], *SORT_LENGTHS, generator, arch["d_vocab"])
    return torch.cat([induction, sorting])


def head_lasso_loss(weight: float, start: int = 0, ramp: int = 1):
    """Next-token cross-entropy plus ``weight`` times the sum over heads of the root mean square (over
    batch and positions) of each head's output into the residual stream: a group lasso that switches
    off the heads the tasks do not need, so that each task's circuit uses few of them.  The weight is
    0 for the first ``start`` calls (training steps), then grows linearly to ``weight`` over ``ramp``."""
    calls = [0]

    def loss(model, tokens: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        scale = weight * min(1.0, max(0, calls[0] - start) / ramp)
        if not scale:
            return training.next_token_loss(model, tokens)
        zs: list[torch.Tensor] = []
        hooks = [(f"blocks.{layer}.attn.hook_z", lambda z, hook: zs.append(z)) for layer in range(model.cfg.n_layers)]
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        for block, z in zip(model.blocks, zs):
            out = torch.einsum("bphd,hdm->bphm", z, block.attn.W_O)  # each head's write
            loss = loss + scale * out.square().sum(-1).mean((0, 1)).add(1e-8).sqrt().sum()
        return loss

    return loss


def learned(measured: dict, induction_ratio: float, sort_accuracy: float) -> bool:
    """Both tasks learned: the repeated span's loss under ``induction_ratio`` of the first copy's and
    (when measured) sorting at ``sort_accuracy`` or better."""
    return (measured["loss_repeated_half"] / measured["loss_first_half"] < induction_ratio
            and measured.get("sort_accuracy", 1.0) >= sort_accuracy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4, help="the model is algo_<layers>l")
    parser.add_argument("--d-model", type=int, default=64, help="residual width (8 heads of d_model / 8)")
    parser.add_argument("--n-ctx", type=int, default=32, help="context length")
    parser.add_argument("--vocab", type=int, default=128, help="token ids, the 3 special tokens included")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4000, help="at most this many steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--min-span", type=int, default=4, help="shortest repeated span in training data")
    parser.add_argument("--induction-fraction", type=float, default=0.75, help="share of induction sequences per batch")
    parser.add_argument("--stop-ratio", type=float, default=0.1,
                        help="stop once the repeated span's loss is below this fraction of the first copy's "
                             "(and sorting at --stop-sort)")
    parser.add_argument("--head-lasso", type=float, default=0.0,
                        help="weight of the group-lasso penalty on each head's output (0: none)")
    parser.add_argument("--lasso-start", type=float, default=0.0,
                        help="the penalty starts after this fraction of --steps and reaches its weight 10%% later")
    parser.add_argument("--stop-sort", type=float, default=0.9)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="default: the package's weights folder")
    args = parser.parse_args(argv)
    name, arch = f"algo_{args.layers}l", architecture(args.layers, args.d_model, args.n_ctx, args.vocab)
    args.out = args.out or shipped_weights_path(name)
    if args.threads:
        torch.set_num_threads(args.threads)
    sorting = args.induction_fraction < 1
    started = time.time()
    model, measured, steps_run = training.train(
        name, arch, args.seed, args.steps, args.lr,
        lambda generator: batch_tokens(args.batch, arch, generator, args.min_span, args.induction_fraction),
        lambda model, generator: measure(model, 256, generator, sorting),
        lambda measured: learned(measured, args.stop_ratio, args.stop_sort), args.log_every,
        loss_fn=head_lasso_loss(args.head_lasso, round(args.lasso_start * args.steps), max(1, args.steps // 10)))
    if not learned(measured, 0.5, 0.5):
        print(f"the model did not learn its tasks after {steps_run} steps: {measured}; weights not written",
              file=sys.stderr)
        return 1
    training.save_shipped(
        args.out, name, arch, model, bos=BOS, first_token=FIRST_TOKEN, sep=SEP, sort=SORT,
        training=dict(seed=args.seed, steps=steps_run, batch=args.batch, lr=args.lr, min_span=args.min_span,
                      induction_fraction=args.induction_fraction, head_lasso=args.head_lasso, lasso_start=args.lasso_start, sort_lengths=list(SORT_LENGTHS),
                      threads=torch.get_num_threads(), torch_version=str(torch.__version__),
                      seconds=round(time.time() - started)),
        measured=measured,
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) in {time.time() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
