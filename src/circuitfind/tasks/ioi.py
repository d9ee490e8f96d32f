"""Indirect object identification on GPT-2 small (Wang et al. 2022; ACDC paper, Section 4).

    clean       "Then, Mary and John went to the store. John gave a ring to"    -> " Mary" (IO)
    corrupted   "Then, Anna and Paul went to the store. Kate gave a ring to"    (the ABC distribution)

The indirect object (IO) is named once and the subject (S) twice; the model should name the IO
next.  The corrupted prompts keep the template, place and object but fill the three name slots
with three fresh names, which removes exactly the information the circuit moves around.
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

TEMPLATE = "Then, {io} and {s} went to the {place}. {s2} gave a {object} to"

NAMES = (
    "Mary John Alice Bob James Michael David Sarah Emma Daniel Laura Paul Mark Lisa Anna Peter Kevin "
    "Jason Jessica Ryan Eric Brian Adam Amy Karen Linda Steven Andrew Thomas Richard Charles Joseph "
    "George Edward Henry Frank Jack Sam Tom Ben Dan Matt Mike Chris Kate Jane Rose Grace Lucy Sophie "
    "Emily Rachel Nancy Helen Ruth Martha Julia Diana Victoria Claire Alex Max Luke Nick Tim Joe Bill "
    "Fred Ted Carl Scott Sean Kyle Kim Leah Eva Ian Adrian Jacob Aaron Martin Simon Patrick Harry "
    "Arthur Oliver Lewis Austin Jeremy Jeff Dave Steve Greg Tony Rick Roger Dennis Amanda Heather "
    "Megan Kelly Hannah Sara Katie Jennifer Michelle Angela Melissa Stephanie Nicole"
).split()
PLACES = ("store garden restaurant school hospital office house station park beach church library "
          "market museum airport").split()
# "gave a [OBJECT]": every object starts with a consonant sound.
OBJECTS = "ring kiss bone basketball computer necklace drink snack book bottle letter gift ball cake".split()

# The circuit of Wang et al., as the ACDC paper scores it: (layer, head) per class.
CIRCUIT: dict[str, tuple[tuple[int, int], ...]] = {
    "name mover": ((9, 9), (10, 0), (9, 6)),
    "backup name mover": ((10, 10), (10, 6), (10, 2), (10, 1), (11, 2), (9, 7), (9, 0), (11, 9)),
    "negative name mover": ((10, 7), (11, 10)),
    "s-inhibition": ((7, 3), (7, 9), (8, 6), (8, 10)),
    "induction": ((5, 5), (5, 8), (5, 9), (6, 9)),
    "duplicate token": ((0, 1), (0, 10), (3, 0)),
    "previous token": ((2, 2), (4, 11)),
}
INPUT, OUTPUT = "INPUT", "OUTPUT"  # the embedding and every MLP output / the output and every MLP input
_MOVERS = ("negative name mover", "name mover", "backup name mover")
# (sender class, receiver class, which inputs of the receiving heads)
CONNECTIONS: tuple[tuple[str, str, str], ...] = (
    (INPUT, "previous token", "qkv"),
    (INPUT, "duplicate token", "qkv"),
    (INPUT, "s-inhibition", "q"),
    *((INPUT, movers, "kv") for movers in _MOVERS),
    ("previous token", "induction", "kv"),
    ("induction", "s-inhibition", "kv"),
    ("duplicate token", "s-inhibition", "kv"),
    *(("s-inhibition", movers, "q") for movers in _MOVERS),
    *((movers, OUTPUT, "") for movers in _MOVERS),
)


def ioi_canonical(graph: Graph) -> set[str]:
    """The IOI circuit as edges of GPT-2 small's qkv graph (1,041 of 32,923).

    The reference implementation starts from the graph restricted to the embedding, the MLPs, the
    output and the 26 circuit heads, drops every edge from the embedding or another head into a circuit
    head and from a circuit head to the output, and adds back the class-to-class ``CONNECTIONS`` (each
    only from a lower layer to a higher one).  What it keeps therefore includes every edge among the
    embedding, the MLPs and the output, every MLP -> circuit-head input, every circuit head -> MLP
    (its own layer's too: heads write before their layer's MLP reads) and each circuit head's q/k/v."""
    L = graph.n_layers
    if (L, graph.n_heads, graph.arch.has_mlps) != (12, 12, True):
        raise ValueError(f"the IOI circuit is named on GPT-2 small's graph, not on a {graph.describe()}")
    heads = [h for members in CIRCUIT.values() for h in members]
    mlps = [(f"m{layer}", layer) for layer in range(L)]
    # A sender's layer: written before any head of a higher layer reads (the embedding: -1).
    senders = {INPUT: [("embed", -1), *mlps],
               **{cls: [(head_name(*h), h[0]) for h in members] for cls, members in CIRCUIT.items()}}

    edges: set[str] = set()
    for layer, head in heads:
        edges |= {head_input_name(layer, head, which) for which in "qkv"}
        edges |= {f"m{m}->{head_input_name(layer, head, which)}" for m in range(layer) for which in "qkv"}
        edges |= {f"{head_name(layer, head)}->m{m}" for m in range(layer, L)}
    edges |= {f"{s}->{r}" for s, _ in [("embed", -1), *mlps] for r, layer in [*mlps, ("resid_post", L)]
              if s == "embed" or int(s[1:]) < layer}
    for sender_class, receiver_class, inputs in CONNECTIONS:
        for sender, sender_layer in senders[sender_class]:
            if receiver_class == OUTPUT:
                receivers = [("resid_post", L), *mlps]
            else:
                receivers = [(head_input_name(layer, head, which), layer)
                             for layer, head in CIRCUIT[receiver_class] for which in inputs]
            edges |= {f"{sender}->{r}" for r, layer in receivers if sender_layer < layer}
    return edges


def _logit_diff(logits: torch.Tensor, clean_logits: torch.Tensor, data: TaskData) -> torch.Tensor:
    last = logits[:, -1]
    return (last.gather(-1, data.extras["io"][:, None]) - last.gather(-1, data.extras["s"][:, None]))[:, 0]


def _frac_correct(logits: torch.Tensor, clean_logits: torch.Tensor, data: TaskData) -> torch.Tensor:
    return (_logit_diff(logits, clean_logits, data) > 0).to(logits.dtype)


def _nll(logits: torch.Tensor, clean_logits: torch.Tensor, data: TaskData) -> torch.Tensor:
    return -F.log_softmax(logits[:, -1].double(), dim=-1).gather(-1, data.extras["io"][:, None])[:, 0].to(logits.dtype)


METRICS = {
    "kl": KL,
    "logit_diff": Metric("logit_diff", _logit_diff, lower_is_better=False),  # logit(IO) - logit(S)
    "frac_correct": Metric("frac_correct", _frac_correct, lower_is_better=False),  # logit(IO) > logit(S)
    "nll": Metric("nll", _nll),  # -log p(IO)
}


def ioi_prompts(n: int, rng: random.Random) -> list[dict[str, str]]:
    """``n`` distinct prompts: IO and S two different names, and three further names for the ABC
    corruption, all five distinct."""
    prompts, seen = [], set()
    while len(prompts) < n:
        io, s, *abc = rng.sample(NAMES, 5)
        fields = dict(io=io, s=s, place=rng.choice(PLACES), object=rng.choice(OBJECTS))
        key = tuple(fields.values())
        if key in seen:
            continue
        seen.add(key)
        prompts.append(dict(fields, abc=abc))
    return prompts


def _split(prompts: list[dict], tokenizer, name_ids: dict[str, int]) -> TaskData:
    clean = encode_prompts(tokenizer, [TEMPLATE.format(io=p["io"], s=p["s"], s2=p["s"], place=p["place"],
                                                       object=p["object"]) for p in prompts])
    a, b, c = zip(*(p["abc"] for p in prompts))
    corrupted = encode_prompts(tokenizer, [TEMPLATE.format(io=x, s=y, s2=z, place=p["place"], object=p["object"])
                                           for x, y, z, p in zip(a, b, c, prompts)])
    extras = dict(io=torch.tensor([name_ids[p["io"]] for p in prompts]),
                  s=torch.tensor([name_ids[p["s"]] for p in prompts]))
    return TaskData(clean, corrupted, last_position(clean), extras)


def ioi_task(seed: int = 0, device="cpu", model: dict | None = None, n_prompts: int = 100, **_) -> Task:
    """IOI with ``n_prompts`` validation and ``n_prompts`` test prompts (disjoint)."""
    require_count("n_prompts", n_prompts)
    tl_model, tokenizer = load_model_and_tokenizer("ioi", model, device, seed)
    name_ids = require_single_tokens(tokenizer, NAMES, "IOI names")
    require_single_tokens(tokenizer, PLACES + OBJECTS, "IOI places and objects")
    prompts = ioi_prompts(2 * n_prompts, random.Random(seed))
    validation = _split(prompts[:n_prompts], tokenizer, name_ids).to(device)
    test = _split(prompts[n_prompts:], tokenizer, name_ids).to(device)
    return Task("ioi", tl_model, validation=validation, test=test, metrics=METRICS, default_metric="kl",
                ground_truth_edges=ioi_canonical if is_gpt2_small(tl_model) else None)
