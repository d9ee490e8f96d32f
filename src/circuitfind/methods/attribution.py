"""Edge attribution patching: EAP (Syed et al. 2023) and EAP-IG (Hanna et al. 2024), through the engine.

The engine's receivers read ``input_r = resid - sum_s (1 - m_rs) (value_s - ablated_s)``, so the
derivative of a loss L with respect to one mask entry is

    dL/dm_rs = (value_s - ablated_s) . dL/d input_r          (summed over prompts, positions, dims)

and one backward pass of the engine's loss gives it for every edge at once (an edge of the coarser
graphs owns several entries: the chain rule sums them).  An edge's **score** is the first-order
estimate of what removing it (m: 1 -> 0) does to the loss,

    EAP:     score_e = -dL/dm_e at m = 1  =  (ablated_s - value_s) . dL/d input_r,
    EAP-IG:  score_e = -mean over alpha of dL/dm_e at m = alpha * 1,  alpha = (i + 1/2) / steps,

the second a midpoint-rule integrated gradient along the straight path from everything removed
(m = 0) to nothing removed (m = 1), so its scores add up to L(0) - L(1) as ``steps`` grows
(completeness).  ``absolute`` (the default, as the peers) ranks by |score|; otherwise by the signed
score, highest first.  The ranking's circuits (tie groups, pruned top-n circuits, the curve at MIB's
fractions, the choice of ``k``) are ``methods/ranking.py``'s.

``ig=inputs`` integrates along the inputs instead: the mask is 1 on every edge but those leaving the
embedding senders, which carry alpha (the engine then feeds every receiver
``ablated + alpha (embedding - ablated)``: the clean and corrupted embeddings interpolated), and each
edge's score is its -dL/dm averaged over alpha.  Unlike the ``eap`` library's variant, the activation
difference in that product is the one of the interpolated run (``value_s(alpha) - ablated_s``), not
the clean run's: the engine's mask gradient gives that product, never dL/d input_r alone.

Objective: the same as HISP's (``methods/objective.py``).  KL and l2 have zero gradient at the unpatched
model, so ``objective=auto`` scores the clean answer's logit there (``answer_logit``) and the task's
metric otherwise.
"""

from __future__ import annotations

import time

import torch

from .result import MethodResult
from .base import Problem
from .objective import DIVERGENCE_METRICS, objective_per_prompt, resolve_objective
from .ranking import edge_ranking, ranked_result, tie_tolerance


def objective_loss(problem: Problem, logits: torch.Tensor, objective: str, split: str = "validation") -> torch.Tensor:
    """The mean loss (lower is better) whose mask derivative the scores are: the task's metric, or
    minus the clean answer's evidence (``answer_logit``)."""
    if objective == "metric":
        return problem.loss(logits, split)
    return -objective_per_prompt(problem, logits, split, objective).mean()


def mask_gradient(problem: Problem, values: torch.Tensor, objective: str, split: str = "validation") -> torch.Tensor:
    """dL/dm [n_edges] at the (fractional) mask ``values``: one engine forward and one backward."""
    engine = problem.engine(split)
    mask = values.detach().to(device=engine.device, dtype=engine.dtype).requires_grad_(True)
    with torch.enable_grad():
        logits, _ = engine.run(mask, problem.data(split).positions)
        if bool((values == 1).all()):
            problem.know_clean_logits(logits, split)
        (grad,) = torch.autograd.grad(objective_loss(problem, logits, objective, split), mask)
    return grad.detach().double().cpu()


def embedding_edges(problem: Problem) -> torch.Tensor:
    """Which edges leave an embedding sender (bool [n_edges])."""
    embeds = set(problem.graph.embed_names)
    return torch.tensor([e.sender in embeds for e in problem.graph.edges])


def attribution_scores(problem: Problem, objective: str, steps: int | None = None, ig: str = "masks",
                       split: str = "validation") -> torch.Tensor:
    """Signed scores [n_edges] (float64): EAP when ``steps`` is None, else EAP-IG over ``steps`` points."""
    n = problem.graph.n_edges
    if steps is None:
        return -mask_gradient(problem, torch.ones(n), objective, split)
    on_path = torch.ones(n, dtype=torch.bool) if ig == "masks" else embedding_edges(problem)
    total = torch.zeros(n, dtype=torch.float64)
    for i in range(steps):
        alpha = (i + 0.5) / steps
        total -= mask_gradient(problem, torch.where(on_path, alpha, 1.0), objective, split)
    return total / steps


def _attribution(problem: Problem, steps: int | None, k, objective, max_points, absolute, ig, target,
                 pruned) -> MethodResult:
    objective = resolve_objective(problem, objective)
    if objective == "metric" and problem.metric.name in DIVERGENCE_METRICS and steps is None:
        raise ValueError(f"metric {problem.metric.name} is a divergence from the unpatched model: its gradient there "
                         "is zero, so EAP would rank rounding noise; use method.objective=answer_logit (or auto)")
    started = time.perf_counter()
    signed = attribution_scores(problem, objective, steps, ig)
    scores_s = round(time.perf_counter() - started, 3)
    scores = signed.abs() if absolute else signed
    ranking = edge_ranking(problem.graph, scores, tie_tolerance(scores, problem.engine().dtype))
    kept, n_kept, curve, chosen = ranked_result(problem, ranking, k, target, max_points, pruned)
    details = dict(objective=objective, absolute=absolute, sum_signed_scores=float(signed.sum()),
                   n_backward=1 if steps is None else steps, scores_s=scores_s, **chosen)
    if steps is not None:
        details.update(steps=steps, ig=ig)
    return MethodResult(problem.graph, scores.float(), kept, parameter=n_kept, curve=curve, details=details,
                        ranking=ranking)


def eap(problem: Problem, k: int | str = "auto", objective: str = "auto", max_points: int | None = None,
        absolute: bool = True, target: float = 0.8, pruned: bool = True) -> MethodResult:
    """Edge attribution patching: one forward and one backward score every edge."""
    return _attribution(problem, None, k, objective, max_points, absolute, "masks", target, pruned)


def eap_ig(problem: Problem, k: int | str = "auto", objective: str = "auto", max_points: int | None = None,
           absolute: bool = True, steps: int = 5, ig: str = "masks", target: float = 0.8,
           pruned: bool = True) -> MethodResult:
    """EAP with integrated gradients: ``steps`` forwards and backwards along the path of masks (or inputs)."""
    return _attribution(problem, steps, k, objective, max_points, absolute, ig, target, pruned)
