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
import math
import pathlib
import sys
import time

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitfind.models.shipped import SHIPPED_FORMAT_VERSION, shipped_weights_path
from circuitfind.tasks.induction import repeated_span_tokens

NAME = "induction_2l"
BOS = 0  # token 0 starts every sequence; ordinary tokens are 1 .. d_vocab - 1
FIRST_TOKEN = 1
ARCHITECTURE = dict(
    n_layers=2, n_heads=8, d_model=128, d_head=16, n_ctx=64, d_vocab=512, attn_only=True,
    normalization_type="LN", positional_embedding_type="standard", act_fn=None,
)


@torch.no_grad()
def measure_induction(model: HookedTransformer, n: int, generator: torch.Generator) -> dict:
    """Losses on BOS + s + s (s as long as fits) over the first and the repeated copy, and per head
    the attention a second-copy token pays to the token after its first occurrence."""
    half = (model.cfg.n_ctx - 1) // 2
    span = torch.randint(FIRST_TOKEN, model.cfg.d_vocab, (n, half), generator=generator)
    tokens = torch.cat([torch.full((n, 1), BOS), span, span], dim=1)
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")  # [n, pos]
    # position p predicts token p + 1; the first copy is 1..half, the second half+1..2*half
    first = nll[:, 1:half].mean().item()  # tokens 2..half: unpredictable
    repeated = nll[:, half + 1:2 * half].mean().item()  # tokens half+2..2*half: predictable by induction
    query = torch.arange(half + 1, 2 * half + 1)  # second-copy tokens
    key = query - half + 1  # the token after the same token's first occurrence
    scores = torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][:, :, query, key].mean((0, 2))
                          for layer in range(model.cfg.n_layers)])  # [layer, head]
    return dict(loss_first_half=first, loss_repeated_half=repeated, induction_head_score=scores.tolist())


def train(seed: int, steps: int, batch: int, lr: float, min_span: int, target_ratio: float, log_every: int):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    cfg = HookedTransformerConfig(**ARCHITECTURE, seed=seed, model_name=NAME)
    model = HookedTransformer(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)  # linear warm-up, then cosine decay to zero at `steps`

    def lr_factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    seq_len, max_span = cfg.n_ctx, (cfg.n_ctx - 1) // 2
    token_pool = torch.arange(FIRST_TOKEN, cfg.d_vocab)
    eval_generator = torch.Generator().manual_seed(seed + 1)
    started, step, measured = time.time(), 0, {}
    for step in range(1, steps + 1):
        span_lens = torch.randint(min_span, max_span + 1, (batch,), generator=generator)
        tokens, _ = repeated_span_tokens(batch, seq_len, span_lens, token_pool, BOS, generator)
        logits = model(tokens)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, cfg.d_vocab), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == steps:
            model.eval()
            measured = measure_induction(model, 256, eval_generator)
            model.train()
            ratio = measured["loss_repeated_half"] / measured["loss_first_half"]
            print(f"step {step:5d}  train loss {loss.item():.3f}  first half {measured['loss_first_half']:.3f}  "
                  f"repeated half {measured['loss_repeated_half']:.3f}  ({time.time() - started:.0f} s)", flush=True)
            if ratio < target_ratio:
                break
    return model, measured, step


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
    state_dict = {name: param.detach().clone() for name, param in model.named_parameters()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(
        format_version=SHIPPED_FORMAT_VERSION, name=NAME, cfg=ARCHITECTURE, state_dict=state_dict,
        bos=BOS, first_token=FIRST_TOKEN,
        training=dict(seed=args.seed, steps=steps_run, batch=args.batch, lr=args.lr, min_span=args.min_span,
                      threads=torch.get_num_threads(), torch_version=str(torch.__version__)),
        measured=measured,
    ), args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB): loss first half "
          f"{measured['loss_first_half']:.3f}, repeated half {measured['loss_repeated_half']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
