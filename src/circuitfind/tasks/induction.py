"""Induction (Olsson et al. 2022; ACDC paper, Section 4): sequences of random tokens in which a span
appears twice.  From the second copy on, each next token is predictable by looking up what followed
the current token the first time; the metrics read only those positions.

    tokens      BOS  x x x [a b c d e] x x [a b c d e] x x
    positions                           ^ ^ ^ ^           (next token predictable by induction)
    corrupted   another prompt's tokens (rows deranged)

The task runs on ``induction_2l``, a 2-layer attention-only model the project trains on such
sequences (``scripts/train_induction.py``); ``model=redwood_attn_2l`` asks for the paper's model.
``task=algo_induction`` is the same task on ``algo_4l`` (``scripts/train_algo.py``), 4 layers and
1,377 edges.
There is no ground-truth circuit: runs report the metric against the number of edges.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.metrics import KL, Metric
from ..models.loading import load_model
from ..models.shipped import read_shipped
from .base import Task, TaskData
from .text import check_vocabulary, load_model_and_tokenizer, require_count
from .tracr import derangement


def repeated_span_tokens(n: int, seq_len: int, span_lens: torch.Tensor, token_pool: torch.Tensor, bos: int,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sequences [n, seq_len]: BOS, then tokens drawn uniformly from ``token_pool``, in which row
    i's span of ``span_lens[i]`` tokens is copied to a later place.  Returns the tokens and each
    row's start of the second copy.  Both copies' places are uniform over those that fit."""
    if int(span_lens.min()) < 2 or 1 + 2 * int(span_lens.max()) > seq_len:
        raise ValueError(f"spans of {int(span_lens.min())}..{int(span_lens.max())} tokens do not repeat "
                         f"within sequences of {seq_len} tokens (BOS included)")
    tokens = token_pool[torch.randint(len(token_pool), (n, seq_len), generator=generator)]
    tokens[:, 0] = bos
    second_starts = torch.empty(n, dtype=torch.long)
    for row, span in enumerate(span_lens.tolist()):
        # first copy at a, second at b: 1 <= a, a + span <= b, b + span <= seq_len
        slack = seq_len - 1 - 2 * span  # free tokens around and between the copies
        before, between = sorted(torch.randint(slack + 1, (2,), generator=generator).tolist())
        first = 1 + before
        second = first + span + (between - before)
        tokens[row, second:second + span] = tokens[row, first:first + span]
        second_starts[row] = second
    return tokens, second_starts


def induction_positions(second_starts: torch.Tensor, span_len: int) -> torch.Tensor:
    """[n, span_len - 1]: the second copy's positions but its last, whose next token is the copy's next."""
    return second_starts[:, None] + torch.arange(span_len - 1)


def _nll(logits: torch.Tensor, clean_logits: torch.Tensor, data: TaskData) -> torch.Tensor:
    """Negative log-likelihood of the true next token, averaged over the induction positions."""
    logp = F.log_softmax(logits.double(), dim=-1)
    return -logp.gather(-1, data.extras["labels"][..., None])[..., 0].mean(-1).to(logits.dtype)


METRICS = {"kl": KL, "nll": Metric("nll", _nll)}


def induction_task(seed: int = 0, device="cpu", model: dict | None = None, n_prompts: int = 50, seq_len: int = 48,
                   span_len: int = 12, name: str = "induction", **_) -> Task:
    """``n_prompts`` validation and ``n_prompts`` test sequences of ``seq_len`` tokens, each with one
    repeated span of ``span_len`` tokens; ``name`` is the task's (``algo_induction``: the same prompts
    on the deeper ``algo_4l``)."""
    for key, value in (("n_prompts", n_prompts), ("seq_len", seq_len), ("span_len", span_len)):
        require_count(key, value, minimum=2)  # a derangement needs two rows; a span, a next token
    if model is not None and model.get("kind") == "shipped":
        shipped = read_shipped(model["name"])
        token_pool, bos = torch.arange(shipped["first_token"], shipped["cfg"]["d_vocab"]), int(shipped["bos"])
        tl_model = load_model(model, device=device, seed=seed)
    else:  # a language model: random tokens from its vocabulary, special tokens left out
        tl_model, tokenizer = load_model_and_tokenizer("induction", model, device, seed)
        special = set(tokenizer.all_special_ids)
        token_pool = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
        bos = int(tokenizer.bos_token_id)
        check_vocabulary(tl_model, token_pool)
    if seq_len > tl_model.cfg.n_ctx:
        raise ValueError(f"seq_len {seq_len} exceeds {tl_model.cfg.model_name}'s context of {tl_model.cfg.n_ctx}")
    generator = torch.Generator().manual_seed(seed)

    def split() -> TaskData:
        tokens, second_starts = repeated_span_tokens(n_prompts, seq_len, torch.full((n_prompts,), span_len),
                                                     token_pool, bos, generator)
        positions = induction_positions(second_starts, span_len)
        labels = tokens.gather(1, positions + 1)
        corrupted = tokens[derangement(n_prompts, generator)]
        return TaskData(tokens, corrupted, positions, dict(labels=labels)).to(device)

    validation, test = split(), split()
    return Task(name, tl_model, validation=validation, test=test, metrics=METRICS, default_metric="kl")
