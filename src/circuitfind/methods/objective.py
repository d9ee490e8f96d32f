"""What the gradient methods (HISP, EAP, EAP-IG, guided ACDC's ordering) differentiate.

KL and l2 measure how far the circuit is from the unpatched model itself, so their gradient there
is exactly zero and would rank nothing.  ``objective=auto`` therefore uses the task metric only when
it is not one of those; otherwise ``answer_logit``: per prompt, the sum over the metric positions of
the logit of the clean model's answer minus the mean logit (a categorical output) or of the output
value itself (a numerical output).  It is linear in the logits, so its gradient never vanishes.
"""

from __future__ import annotations

import torch

from .base import Problem

# Metrics that are divergences from the unpatched model: zero gradient at it.
DIVERGENCE_METRICS = ("kl", "l2")


def resolve_objective(problem: Problem, objective: str) -> str:
    if objective == "auto":
        return "answer_logit" if problem.metric.name in DIVERGENCE_METRICS else "metric"
    return objective


def objective_per_prompt(problem: Problem, logits: torch.Tensor, split: str, objective: str) -> torch.Tensor:
    """F for each prompt ([batch]) from the logits at the split's metric positions."""
    if objective == "metric":
        return problem.per_prompt(logits, split)
    if logits.shape[-1] == 1:  # a numerical output: its value
        return logits[..., 0].sum(-1)
    answer = problem.clean_logits(split).argmax(-1, keepdim=True)
    return (logits.gather(-1, answer).squeeze(-1) - logits.mean(-1)).sum(-1)
