"""What the natural-language tasks share: words that are single tokens, prompts encoded to one
length, and the model behind a task."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from ..models.loading import load_model, load_tokenizer

# A model view (models/view): a TransformerLens 3 HookedTransformer, or a TransformerLens 4
# TransformerBridge wrapped as one.
ModelView = object


def load_model_and_tokenizer(task: str, model: dict | None, device, seed: int) -> tuple[ModelView, object]:
    """The task's model (from its model config) and the tokenizer its prompts are written in."""
    if model is None or model.get("kind") not in ("hub", "hf"):
        raise ValueError(f"task {task} needs a language model (model=gpt2, attn_only_4l or redwood_attn_2l), "
                         f"not model={None if model is None else model.get('name')}")
    if model.get("pretrained", True):
        # Weights first: where they are missing, that is what the one-line error should say.
        tl_model = load_model(model, device=device, seed=seed)
        return tl_model, load_tokenizer(model)
    tokenizer = load_tokenizer(model)  # a random-weight model sizes its vocabulary to fit it
    return load_model(model, device=device, seed=seed, tokenizer=tokenizer), tokenizer


def require_count(name: str, value, minimum: int = 1) -> None:
    """A task size from the config (``n_prompts``, ...) must be an integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")


def single_token_ids(tokenizer, words: Iterable[str], prefix: str = " ") -> dict[str, int]:
    """The ``words`` that ``prefix + word`` encodes as exactly one token, with that token's id."""
    ids = {}
    for word in words:
        encoded = tokenizer.encode(prefix + word, add_special_tokens=False)
        if len(encoded) == 1:
            ids[word] = encoded[0]
    return ids


def require_single_tokens(tokenizer, words: Sequence[str], what: str, prefix: str = " ") -> dict[str, int]:
    """Like ``single_token_ids``, but every word must be one token: the prompts' positions depend on it."""
    ids = single_token_ids(tokenizer, words, prefix)
    split = [w for w in words if w not in ids]
    if split:
        raise ValueError(f"{what} must be single tokens (with a leading {prefix!r}) for this tokenizer; "
                         f"these are not: {', '.join(split[:10])}")
    return ids


def encode_prompts(tokenizer, texts: Sequence[str], bos: bool = False) -> torch.Tensor:
    """Token ids [len(texts), seq] (``bos``: the tokenizer's BOS first); every text must encode to the
    same number of tokens, since the metrics read fixed positions."""
    rows = [([tokenizer.bos_token_id] if bos else []) + tokenizer.encode(t, add_special_tokens=False) for t in texts]
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        longest = max(range(len(rows)), key=lambda i: len(rows[i]))
        raise ValueError(f"prompts encode to different lengths {sorted(lengths)}, e.g. {texts[longest]!r}")
    return torch.tensor(rows, dtype=torch.long)


def check_vocabulary(model: ModelView, *tokens: torch.Tensor) -> None:
    """Every token id must be one the model embeds (a tokenizer that is not the model's own may
    produce others)."""
    top = max(int(t.max()) for t in tokens)
    if top >= model.cfg.d_vocab:
        raise ValueError(f"token id {top} is outside {model.cfg.model_name}'s vocabulary of {model.cfg.d_vocab}")


def last_position(tokens: torch.Tensor) -> torch.Tensor:
    """Positions [batch, 1] of each prompt's last token: where next-token tasks read the answer."""
    return torch.full((tokens.shape[0], 1), tokens.shape[1] - 1, dtype=torch.long)


def is_gpt2_small(model: ModelView) -> bool:
    """Whether ``model`` has GPT-2 small's graph, on which the IOI and Greater-Than circuits are named."""
    cfg = model.cfg
    return (cfg.n_layers, cfg.n_heads, bool(cfg.attn_only)) == (12, 12, False)
