"""Greater-Than on GPT-2 small (Hanna et al. 2023; ACDC paper, Section 4).

    clean       "The war lasted from the year 1732 to 17"   -> a two-digit year end above 32
    corrupted   "The war lasted from the year 1701 to 17"   (the start year's end replaced by 01)

The metric is the probability the model puts on two-digit continuations later than the start year
minus the probability on those at or before it.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from ..core.graph import Graph, head_input_name, head_name
from ..core.metrics import KL, Metric
from .base import Task, TaskData
from .text import (encode_prompts, is_gpt2_small, last_position, load_model_and_tokenizer, require_count,
                   require_single_tokens)

TEMPLATE = "The {noun} lasted from the year {century}{yy} to {century}"
CENTURIES = range(11, 18)
CORRUPTED_YY = "01"  # every kept year ends in 02..98, so the corrupted start is always earlier
NOUNS = (
    "war expedition reign siege campaign crusade rebellion revolt uprising invasion occupation dynasty "
    "empire kingdom alliance treaty truce ceasefire conflict struggle battle blockade embargo famine "
    "plague epidemic drought flood migration voyage journey pilgrimage mission exile captivity "
    "imprisonment trial marriage friendship rivalry partnership presidency tenure rule regime "
    "administration government parliament council monarchy republic colony settlement construction "
    "restoration renovation project program experiment study survey investigation excavation tour trip "
    "residency career boom recession depression crisis strike boycott protest riot insurgency dispute "
    "feud scandal controversy debate negotiation agreement contract festival tournament competition "
    "championship ceremony celebration mourning quarantine lockdown collapse decline expansion growth "
    "reform revolution movement"
).split()

# The circuit of Hanna et al. as the ACDC paper scores it: heads (layer, head), MLPs (layer, None).
CIRCUIT: dict[str, tuple[tuple[int, int | None], ...]] = {
    "0.3 0.5": ((0, 3), (0, 5)),
    "0.1": ((0, 1),),
    "early MLPs": tuple((layer, None) for layer in range(4)),
    "mid heads": ((5, 5), (6, 1), (6, 9), (7, 10), (8, 11), (9, 1)),
    "late MLPs": tuple((layer, None) for layer in range(8, 12)),
}
CONNECTED = (("0.1", "early MLPs"), ("0.1", "mid heads"), ("0.3 0.5", "mid heads"),
             ("early MLPs", "mid heads"), ("mid heads", "late MLPs"))


def _writes(node: tuple[int, int | None]) -> str:
    layer, head = node
    return f"m{layer}" if head is None else head_name(layer, head)


def _reads(node: tuple[int, int | None]) -> list[str]:
    layer, head = node
    return [f"m{layer}"] if head is None else [head_input_name(layer, head, which) for which in "qkv"]


def _feeds(sender: tuple[int, int | None], receiver: tuple[int, int | None]) -> bool:
    """Whether ``sender`` writes before ``receiver`` reads: a lower layer, or a head feeding its own
    layer's MLP."""
    return sender[0] < receiver[0] or (sender[0] == receiver[0] and sender[1] is not None and receiver[1] is None)


def greaterthan_canonical(graph: Graph) -> set[str]:
    """The Greater-Than circuit as edges of GPT-2 small's qkv graph (262 of 32,923)."""
    if (graph.n_layers, graph.n_heads, graph.arch.has_mlps) != (12, 12, True):
        raise ValueError(f"the Greater-Than circuit is named on GPT-2 small's graph, not on a {graph.describe()}")
    edges: set[str] = set()
    for group in ("0.3 0.5", "0.1", "early MLPs"):
        edges |= {f"embed->{r}" for node in CIRCUIT[group] for r in _reads(node)}
    for group in ("mid heads", "late MLPs"):
        edges |= {f"{_writes(node)}->resid_post" for node in CIRCUIT[group]}
    for group in ("early MLPs", "late MLPs"):  # the MLPs of a group feed each other
        edges |= {f"m{a}->m{b}" for a, _ in CIRCUIT[group] for b, _ in CIRCUIT[group] if a < b}
    for senders, receivers in CONNECTED:
        edges |= {f"{_writes(s)}->{r}" for s in CIRCUIT[senders] for node in CIRCUIT[receivers]
                  if _feeds(s, node) for r in _reads(node)}
    heads = [(layer, head) for nodes in CIRCUIT.values() for layer, head in nodes if head is not None]
    edges |= {head_input_name(layer, head, which) for layer, head in heads for which in "qkv"}
    # Hanna et al. leave the mid heads' queries clean, which the reference renders as every MLP up to
    # the last mid head's layer feeding the later ones and every earlier MLP feeding a mid head's query.
    last_mid = max(layer for layer, _ in CIRCUIT["mid heads"])
    edges |= {f"m{a}->m{b}" for a in range(last_mid) for b in range(a + 1, last_mid)}
    edges |= {f"m{m}->{head_input_name(layer, head, 'q')}"
              for layer, head in CIRCUIT["mid heads"] for m in range(layer)}
    return edges


def candidate_years(tokenizer) -> list[str]:
    """Years XX02..XX98 of centuries 11-17 whose " XXYY" is the two tokens " XX" + "YY", without the
    first and the last such year of each century (as in Hanna et al.)."""
    century_ids = require_single_tokens(tokenizer, [str(c) for c in CENTURIES], "centuries")
    years = []
    for century in CENTURIES:
        split = [f"{century}{yy:02d}" for yy in range(2, 99)
                 if tokenizer.encode(f" {century}{yy:02d}", add_special_tokens=False)
                 == [century_ids[str(century)], *tokenizer.encode(f"{yy:02d}", add_special_tokens=False)]]
        years += split[1:-1]
    return years


def _prob_diff(logits: torch.Tensor, clean_logits: torch.Tensor, data: TaskData) -> torch.Tensor:
    """P(year end > YY) - P(year end <= YY), over the 100 two-digit tokens."""
    probs = F.softmax(logits[:, -1].double(), dim=-1)[:, data.extras["year_ids"][0]]  # [batch, 100]
    later = torch.arange(100, device=logits.device)[None, :] > data.extras["yy"][:, None]
    return torch.where(later, probs, -probs).sum(-1).to(logits.dtype)


METRICS = {"kl": KL, "prob_diff": Metric("prob_diff", _prob_diff, lower_is_better=False)}


def greaterthan_task(seed: int = 0, device="cpu", model: dict | None = None, n_prompts: int = 100, **_) -> Task:
    """Greater-Than with ``n_prompts`` validation and ``n_prompts`` test prompts (disjoint)."""
    require_count("n_prompts", n_prompts)
    tl_model, tokenizer = load_model_and_tokenizer("greaterthan", model, device, seed)
    require_single_tokens(tokenizer, NOUNS, "Greater-Than nouns")
    two_digit = require_single_tokens(tokenizer, [f"{yy:02d}" for yy in range(100)], "two-digit numbers", prefix="")
    year_ids = torch.tensor([two_digit[f"{yy:02d}"] for yy in range(100)])
    years = candidate_years(tokenizer)
    pairs = [(noun, year) for noun in NOUNS for year in years]
    if len(pairs) < 2 * n_prompts:
        raise ValueError(f"n_prompts={n_prompts} asks for more distinct prompts than the {len(pairs) // 2} "
                         "per split there are")
    chosen = random.Random(seed).sample(pairs, 2 * n_prompts)

    def split(rows: list[tuple[str, str]]) -> TaskData:
        clean = encode_prompts(tokenizer, [TEMPLATE.format(noun=n, century=y[:2], yy=y[2:]) for n, y in rows])
        yy = torch.tensor([int(y[2:]) for _, y in rows])
        # Prompts end [..., " XX", "YY", " to", " XX"].  The corruption swaps the YY token itself:
        # " 1701" re-tokenised need not split as " 17" + "01".
        yy_position = clean.shape[1] - 3
        if not torch.equal(clean[:, yy_position], year_ids[yy]):
            raise ValueError("Greater-Than prompts do not tokenise as [..., ' XX', 'YY', ' to', ' XX']")
        corrupted = clean.clone()
        corrupted[:, yy_position] = two_digit[CORRUPTED_YY]
        extras = dict(yy=yy, year_ids=year_ids.expand(len(rows), -1).clone())
        return TaskData(clean, corrupted, last_position(clean), extras).to(device)

    return Task("greaterthan", tl_model, validation=split(chosen[:n_prompts]), test=split(chosen[n_prompts:]),
                metrics=METRICS, default_metric="kl",
                ground_truth_edges=greaterthan_canonical if is_gpt2_small(tl_model) else None)
