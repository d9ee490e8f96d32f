'''Docstring on the 4-layer attention-only model (Heimersheim & Janiak 2023; ACDC paper, Section 4).

    clean       def load(self, files, size, mode):
                    """Read the image data

                    :param files: input path
                    :param size: block count
                    :param                                   -> " mode"
    corrupted   the same with the definition's and the docstring's parameter names replaced by
                five different random names

The model should name the parameter the docstring has not documented yet; the wrong answers are the
other parameter names.  The metric is the answer's logit minus the largest wrong logit.
'''

from __future__ import annotations

import random

import torch

from ..core.graph import Graph, head_input_name
from ..core.metrics import KL, Metric
from .base import Task, TaskData
from .text import (check_vocabulary, encode_prompts, last_position, load_model_and_tokenizer, require_count,
                   single_token_ids)

N_PARAMS = 3
DESCRIPTION_WORDS = 2  # words after each ":param name:"
# Candidate words; each run keeps those that are single tokens for the model's tokenizer.
PARAMETER_NAMES = (
    "data name file value key path size mode item count index order state config source target result "
    "output input token user text line field label query table model color shape start end limit offset "
    "prefix suffix format title status group content message event parent child node root header option "
    "level depth width height length number weight scale factor rate delta alpha beta score total price "
    "amount date time year month day host port url address timeout callback handler filter buffer cache "
    "batch stream channel queue block frame image sample seed step epoch loss mask layer unit module"
).split()
DESCRIPTION_NOUNS = (
    "image list number string object method class record error request response server client session "
    "window page tree graph edge point shape color row column cell byte file folder account email "
    "password phone city country region system device driver engine process thread task job worker "
    "service network socket packet signal event action rule policy report chart plot figure table entry "
    "link word sentence document book store product order payment invoice customer"
).split()
SUMMARY_VERBS = "Return Get Set Load Save Create Update Build Check Read Write Find Make Run Send Add Remove".split()
# Distinct names one prompt draws: the method's, its parameters, and the corruption's fresh
# definition and docstring names.
NAMES_PER_PROMPT = 1 + N_PARAMS + N_PARAMS + (N_PARAMS - 1)

# Heads named by Heimersheim & Janiak, as the ACDC paper scores them: receiver -> {input: senders}.
CIRCUIT: dict[str, dict[str, tuple[str, ...]]] = {
    "a0.h5": {"v": ("embed",)},
    "a1.h4": {"v": ("embed", "a0.h5")},
    "a1.h2": {"q": ("embed", "a0.h5"), "k": ("embed", "a0.h5")},
    "a2.h0": {"q": ("embed", "a0.h5"), "k": ("embed", "a0.h5"), "v": ("a1.h4",)},
    "a3.h0": {"q": ("a1.h4",), "k": ("a2.h0", "a1.h2"), "v": ("embed", "a0.h5")},
    "a3.h6": {"q": ("a1.h4",), "k": ("a2.h0", "a1.h2"), "v": ("embed", "a0.h5")},
}
OUTPUT_HEADS = ("a3.h0", "a3.h6")


def docstring_canonical(graph: Graph) -> set[str]:
    """The docstring circuit as edges of the 4-layer, 8-head attention-only qkv graph (37 of 1,377):
    the edges above, each head's q/k/v edges that carry them, and the two output heads' outputs."""
    if (graph.n_layers, graph.n_heads, graph.arch.has_mlps) != (4, 8, False):
        raise ValueError(f"the docstring circuit is named on attn-only-4l's graph, not on a {graph.describe()}")
    edges = {f"{head}->resid_post" for head in OUTPUT_HEADS}
    for head, inputs in CIRCUIT.items():
        layer, index = (int(part[1:]) for part in head.split("."))
        for which, senders in inputs.items():
            edges.add(head_input_name(layer, index, which))
            edges |= {f"{sender}->{head_input_name(layer, index, which)}" for sender in senders}
    return edges


def _answer_minus_best_wrong(logits: torch.Tensor, clean_logits: torch.Tensor, data: TaskData) -> torch.Tensor:
    last = logits[:, -1]
    answer = last.gather(-1, data.extras["answer"][:, None])[:, 0]
    return answer - last.gather(-1, data.extras["wrong"]).max(-1).values


METRICS = {"kl": KL, "logit_diff": Metric("logit_diff", _answer_minus_best_wrong, lower_is_better=False)}


def docstring_text(method: str, summary: list[str], def_params: list[str], doc_params: list[str],
                   descriptions: list[list[str]]) -> str:
    """A method whose reST docstring documents ``doc_params`` and stops at the next ``:param``."""
    lines = [f"def {method}(self, {', '.join(def_params)}):", f'    """{" ".join(summary)}', ""]
    lines += [f"    :param {name}: {' '.join(words)}" for name, words in zip(doc_params, descriptions)]
    return "\n".join(lines + ["    :param"])


def docstring_task(seed: int = 0, device="cpu", model: dict | None = None, n_prompts: int = 100, **_) -> Task:
    """Docstring with ``n_prompts`` validation and ``n_prompts`` test prompts (disjoint)."""
    require_count("n_prompts", n_prompts)
    tl_model, tokenizer = load_model_and_tokenizer("docstring", model, device, seed)
    names = single_token_ids(tokenizer, PARAMETER_NAMES)
    nouns = list(single_token_ids(tokenizer, DESCRIPTION_NOUNS))
    verbs = list(single_token_ids(tokenizer, SUMMARY_VERBS, prefix=""))
    if len(names) < 2 * NAMES_PER_PROMPT or len(nouns) < 2 * DESCRIPTION_WORDS or not verbs:
        raise ValueError(f"the tokenizer keeps too few single-token words for docstring prompts "
                         f"({len(names)} names, {len(nouns)} nouns, {len(verbs)} verbs)")
    rng, pool = random.Random(seed), sorted(names)
    rows, seen = [], set()
    while len(rows) < 2 * n_prompts:
        method, *params = rng.sample(pool, NAMES_PER_PROMPT)
        clean_params, corrupt_def, corrupt_doc = params[:N_PARAMS], params[N_PARAMS:2 * N_PARAMS], params[2 * N_PARAMS:]
        if (method, *clean_params) in seen:
            continue
        seen.add((method, *clean_params))
        summary = [rng.choice(verbs), "the", *rng.sample(nouns, 2)]
        descriptions = [rng.sample(nouns, DESCRIPTION_WORDS) for _ in range(N_PARAMS - 1)]
        rows.append(dict(
            clean=docstring_text(method, summary, clean_params, clean_params[:-1], descriptions),
            corrupted=docstring_text(method, summary, corrupt_def, corrupt_doc, descriptions),
            answer=names[clean_params[-1]], wrong=[names[p] for p in clean_params[:-1]],
        ))

    def split(part: list[dict]) -> TaskData:
        clean = encode_prompts(tokenizer, [r["clean"] for r in part], bos=True)
        corrupted = encode_prompts(tokenizer, [r["corrupted"] for r in part], bos=True)
        check_vocabulary(tl_model, clean, corrupted)
        extras = dict(answer=torch.tensor([r["answer"] for r in part]), wrong=torch.tensor([r["wrong"] for r in part]))
        return TaskData(clean, corrupted, last_position(clean), extras).to(device)

    is_attn_only_4l = (tl_model.cfg.n_layers, tl_model.cfg.n_heads, tl_model.cfg.attn_only) == (4, 8, True)
    return Task("docstring", tl_model, validation=split(rows[:n_prompts]), test=split(rows[n_prompts:]),
                metrics=METRICS, default_metric="kl",
                ground_truth_edges=docstring_canonical if is_attn_only_4l else None)
