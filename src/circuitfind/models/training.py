"""The training loop and the weights file shared by the scripts that train the shipped models
(``scripts/train_induction.py``, ``scripts/train_algo.py``).

A run is seeded: the same seed, torch version and thread count give the same weights.
"""

from __future__ import annotations

import math
import pathlib
import time
from typing import Callable

import torch
import torch.nn.functional as F
from .shipped import SHIPPED_FORMAT_VERSION
from .view.tl3 import config, hooked_transformer

# the trained models are TransformerLens 3 HookedTransformers, built through its backend
Model = torch.nn.Module


def warmup_cosine(steps: int, warmup_fraction: float = 0.05) -> Callable[[int], float]:
    """The learning-rate factor at each step: linear warm-up over ``warmup_fraction`` of the steps,
    then cosine decay to zero at ``steps``."""
    warmup = max(1, round(steps * warmup_fraction))

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))

    return factor


@torch.no_grad()
def measure_induction(model: Model, n: int, generator: torch.Generator, bos: int, first_token: int) -> dict:
    """Losses on BOS + s + s (s random tokens from ``first_token`` on, as long as fits) over the first
    and the repeated copy, and per head the attention a second-copy token pays to the token after
    its first occurrence (1 for a perfect induction head)."""
    half = (model.cfg.n_ctx - 1) // 2
    span = torch.randint(first_token, model.cfg.d_vocab, (n, half), generator=generator)
    tokens = torch.cat([torch.full((n, 1), bos), span, span], dim=1)
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


def next_token_loss(model: Model, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over every position of ``tokens`` [batch, n_ctx]."""
    logits = model(tokens)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def train(name: str, architecture: dict, seed: int, steps: int, lr: float,
          next_batch: Callable[[torch.Generator], torch.Tensor],
          measure: Callable[[Model, torch.Generator], dict],
          done: Callable[[dict], bool] = lambda measured: False, log_every: int = 100,
          weight_decay: float = 0.01, warmup_fraction: float = 0.05,
          loss_fn: Callable[[Model, torch.Tensor], torch.Tensor] = next_token_loss,
          ) -> tuple[Model, dict, int]:
    """Train a fresh ``HookedTransformer(architecture)`` on ``loss_fn(model, tokens)`` (default:
    next-token cross-entropy over every position) of ``next_batch(generator)`` ([batch, n_ctx] token
    ids) with AdamW, warm-up and cosine decay.  Every ``log_every`` steps (and at the last) it prints
    and records ``measure(model, eval_generator)``, and stops early once ``done(measured)``.  Returns
    the model, the last measurement and the number of steps run."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    eval_generator = torch.Generator().manual_seed(seed + 1)
    model = hooked_transformer(config(**architecture, seed=seed, model_name=name))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, warmup_fraction))
    started, step, measured = time.time(), 0, {}
    for step in range(1, steps + 1):
        loss = loss_fn(model, next_batch(generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                measured = measure(model, eval_generator)
            model.train()
            shown = "  ".join(f"{k} {v:.3f}" for k, v in measured.items() if isinstance(v, float))
            print(f"step {step:5d}  train loss {loss.item():.3f}  {shown}  ({time.time() - started:.0f} s)", flush=True)
            if done(measured):
                break
    return model, measured, step


def save_shipped(path: pathlib.Path, name: str, architecture: dict, model: Model, **recorded) -> None:
    """Write ``model`` in the shipped-weights format that ``shipped.read_shipped`` reads, with
    whatever the script ``recorded`` (special tokens, training settings, measurements)."""
    state_dict = {key: param.detach().clone() for key, param in model.named_parameters()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(format_version=SHIPPED_FORMAT_VERSION, name=name, cfg=architecture, state_dict=state_dict,
                    **recorded), path)
