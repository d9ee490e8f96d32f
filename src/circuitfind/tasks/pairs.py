"""``task=pairs``: your own prompt pairs from a CSV, JSON or JSONL file (``pairs_file.py`` reads it).

Each row gives a clean and a corrupted prompt and, for the answer metrics, the correct next token
(and a wrong one).  The metrics read the logits at one position per prompt (the clean prompt's last
token unless the row's ``position`` says otherwise):

    kl          KL(full model || circuit) over the vocabulary (the default, needs no answer)
    nll         -log p(answer)
    logit_diff  logit(answer) - logit(wrong answer)
    prob_diff   p(answer) - p(wrong answer)

The patching engine runs every prompt at one length, so all clean and corrupted prompts must
tokenise to the same number of tokens; ``task.pad=true`` instead left-pads every prompt to the
longest with the tokenizer's pad (or end-of-text) token and shifts each metric position with it.
Padding tokens are attended to like any other (the engine has no attention mask), so padded prompts
are not the model's computation on the unpadded text: prefer pairs of one length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.metrics import KL, Metric
from .pairs_file import NEEDS_ANSWER, NEEDS_WRONG_ANSWER, Pair, PairsFileError, read_pairs
from .base import Task, TaskData
from .text import check_vocabulary


def _answer_logits(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Logits [batch, k, vocab] of each prompt's token ``ids`` [batch], averaged over the k positions."""
    return logits.gather(-1, ids[:, None, None].expand(-1, logits.shape[1], 1))[..., 0].mean(-1)


def _answer_probs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    probs = F.softmax(logits.double(), dim=-1)
    return _answer_logits(probs, ids).to(logits.dtype)


def _nll(logits, clean_logits, data: TaskData) -> torch.Tensor:
    logp = F.log_softmax(logits.double(), dim=-1)
    return -_answer_logits(logp, data.extras["answer"]).to(logits.dtype)


def _logit_diff(logits, clean_logits, data: TaskData) -> torch.Tensor:
    return _answer_logits(logits, data.extras["answer"]) - _answer_logits(logits, data.extras["wrong_answer"])


def _prob_diff(logits, clean_logits, data: TaskData) -> torch.Tensor:
    return _answer_probs(logits, data.extras["answer"]) - _answer_probs(logits, data.extras["wrong_answer"])


ANSWER_METRICS = {
    "kl": KL,
    "nll": Metric("nll", _nll),
    "logit_diff": Metric("logit_diff", _logit_diff, lower_is_better=False),
    "prob_diff": Metric("prob_diff", _prob_diff, lower_is_better=False),
}


def answer_metrics(has_answer: bool, has_wrong_answer: bool) -> dict[str, Metric]:
    """The metrics the answers at hand allow (KL always)."""
    return {name: metric for name, metric in ANSWER_METRICS.items()
            if (name not in NEEDS_ANSWER or has_answer) and (name not in NEEDS_WRONG_ANSWER or has_wrong_answer)}


# ---- tokenising the pairs --------------------------------------------------------------------
def _pad_id(tokenizer) -> int:
    for token in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if token is not None:
            return token
    raise ValueError("task.pad=true needs a pad, end-of-text or BOS token, and this tokenizer has none")


def _answer_id(tokenizer, pair: Pair, column: str, value) -> int | None:
    if value is None or isinstance(value, int):
        return value
    ids = tokenizer.encode(value, add_special_tokens=False)
    if len(ids) != 1:
        raise PairsFileError(f"row {pair.row}: {column} {value!r} is {len(ids)} tokens; answers must be one "
                             "token (mind the leading space: ' Mary')")
    return ids[0]


def encode_pairs(tokenizer, pairs: list[Pair], pad: bool = False, prepend_bos: bool = False) -> TaskData:
    """Token ids of every pair, at one length (left-padded with ``pad``), the metric positions and
    the answer ids (extras ``answer``/``wrong_answer`` where every row has one)."""
    bos = [tokenizer.bos_token_id] if prepend_bos else []
    clean = [bos + tokenizer.encode(p.clean, add_special_tokens=False) for p in pairs]
    corrupted = [bos + tokenizer.encode(p.corrupted, add_special_tokens=False) for p in pairs]
    positions = [_position(p, len(c)) for p, c in zip(pairs, clean)]
    if pad:
        length, pad_id = max(len(t) for t in clean + corrupted), _pad_id(tokenizer)
        positions = [pos + length - len(c) for pos, c in zip(positions, clean)]
        clean, corrupted = ([[pad_id] * (length - len(t)) + t for t in rows] for rows in (clean, corrupted))
    else:
        _check_lengths(pairs, clean, corrupted)
    extras = {}
    for column in ("answer", "wrong_answer"):
        ids = [_answer_id(tokenizer, p, column, getattr(p, column)) for p in pairs]
        if all(i is not None for i in ids):
            extras[column] = torch.tensor(ids, dtype=torch.long)
    return TaskData(torch.tensor(clean), torch.tensor(corrupted), torch.tensor(positions)[:, None], extras)


def _position(pair: Pair, length: int) -> int:
    if pair.position is None:
        return length - 1
    position = pair.position + length if pair.position < 0 else pair.position
    if not 0 <= position < length:
        raise PairsFileError(f"row {pair.row}: position {pair.position} is outside the clean prompt "
                             f"({length} tokens)")
    return position


def _check_lengths(pairs: list[Pair], clean: list[list[int]], corrupted: list[list[int]]) -> None:
    for pair, c, x in zip(pairs, clean, corrupted):
        if len(c) != len(x):
            raise PairsFileError(f"row {pair.row}: the clean prompt is {len(c)} tokens and the corrupted one "
                                 f"{len(x)}; make them one length or set task.pad=true to left-pad")
        if len(c) != len(clean[0]):
            raise PairsFileError(f"row {pair.row}: its prompts are {len(c)} tokens, row {pairs[0].row}'s "
                                 f"{len(clean[0])}; make every prompt one length or set task.pad=true")


# ---- the task --------------------------------------------------------------------------------
def load_pairs_model(model: dict | None, device, seed: int, check_tokens):
    """The model and tokenizer of a pairs task: the tokenizer first, so that ``check_tokens(tokenizer)``
    (the prompts' lengths, one-token answers) fails before any weights load."""
    from ..models.loading import load_model, load_tokenizer

    if model is None or model.get("kind") not in ("hub", "hf"):
        raise ValueError("task pairs needs a language model with a tokenizer (model=hf model.name=<a "
                         f"TransformerLens name>, or model=gpt2), not model={None if model is None else model.get('name')}")
    tokenizer = load_tokenizer(model)
    data = check_tokens(tokenizer)
    return load_model(model, device=device, seed=seed, tokenizer=tokenizer), data


def pairs_task(seed: int = 0, device="cpu", model: dict | None = None, path: str | None = None,
               pad: bool = False, prepend_bos: bool = False, **_) -> Task:
    """The pairs in ``path``, as both the validation split (searched) and the test split (reported)."""
    if not path:
        raise ValueError("task=pairs needs task.path=<a CSV, JSON or JSONL file of prompt pairs>")
    pairs = read_pairs(path)
    tl_model, data = load_pairs_model(model, device, seed, lambda tok: encode_pairs(tok, pairs, pad, prepend_bos))
    check_vocabulary(tl_model, data.clean, data.corrupted, *data.extras.values())
    data = data.to(device)
    return Task("pairs", tl_model, validation=data, test=data,
                metrics=answer_metrics("answer" in data.extras, "wrong_answer" in data.extras),
                default_metric="kl")
