"""HISP: Head Importance Score for Pruning (Michel et al. 2019), as the ACDC paper applies it.

The importance of a component C (a head's q, k or v input, or an MLP's output; a head's output in
the coarser graphs, see ``components``) is the first-order estimate of what ablating it does to the
task objective F, averaged over prompts:

    I(C) = mean over prompts x of | sum over positions and dims of (C(x) - C(x')) * dF/dC(x) |

with x' the corrupted prompt (zero ablation: C in the one run with every sender zeroed; the engine's
ablated values under any corruption).  The engine mixes z * C(x) + (1 - z) * C(x') through a
component's gate z (a float mask on its edges), so the sum is dF/dz at z = 1: the engine's gradient
with respect to the gates (``Problem.gate_gradients``: one forward, one backward per prompt,
vectorised).  Scores are then divided by their layer's L2 norm.  The top-k components (whole tie
groups) make one circuit, every edge between kept components, pruned; the curve, its fractions and
the choice of ``k`` are ``methods/ranking.py``'s.

Objective.  KL and l2 measure how far the circuit is from the unpatched model itself, so their
gradient there is exactly zero and would rank nothing.  ``objective=auto`` therefore uses the task
metric only when it is not one of those; otherwise ``answer_logit``: per prompt, the sum over the
metric positions of the logit of the clean model's answer minus the mean logit (a categorical
output, tracr-reverse) or of the output value itself (a numerical output, tracr-proportion).  It is
linear in the logits, so its gradient never vanishes, and it measures exactly what ablating a
component moves: the model's evidence for its own clean answer.
"""

from __future__ import annotations

import time

import torch

from .base import Problem
from .components import Components
from .objective import DIVERGENCE_METRICS, objective_per_prompt, resolve_objective
from .ranking import component_ranking, ranked_result, tie_tolerance
from .result import MethodResult

def component_attributions(problem: Problem, components: Components, objective: str,
                           split: str = "validation") -> torch.Tensor:
    """Per prompt and component, sum over positions and dims of (C(x) - C(x')) * dF/dC(x): [batch, n].

    That is the derivative of F along the component's gate z (the engine mixes z * C(x) + (1 - z) *
    C(x')) at z = 1, so it is read from the engine's gradient with respect to the gates."""
    return problem.gate_gradients(components.edge_mask_values, len(components),
                                  lambda logits: objective_per_prompt(problem, logits, split, objective), split)


def layer_normalised(scores: torch.Tensor, components: Components) -> torch.Tensor:
    out = scores.clone()
    for indices in components.layers():
        if indices:
            norm = scores[indices].norm()
            if norm > 0:
                out[indices] = scores[indices] / norm
    return out


def hisp(problem: Problem, k: int | str = "auto", objective: str = "auto", max_points: int | None = None,
         target: float = 0.8, pruned: bool = True) -> MethodResult:
    """Rank components by importance; the circuit at ``k`` (see ``methods/ranking.py``) is the
    method's own, and ``curve`` holds the circuits at MIB's fractions."""
    components = Components(problem.graph)
    if len(components) == 0:
        raise ValueError(f"the {problem.graph.describe()} has no component HISP can rank")
    objective = resolve_objective(problem, objective)
    if objective == "metric" and problem.metric.name in DIVERGENCE_METRICS:
        # Its gradient is zero up to rounding, which the per-layer normalisation would blow up to 1.
        raise ValueError(f"metric {problem.metric.name} is a divergence from the unpatched model: its gradient there "
                         "is zero, so HISP would rank rounding noise; use method.objective=answer_logit (or auto)")
    started = time.perf_counter()
    attributions = component_attributions(problem, components, objective)
    raw = attributions.abs().mean(0).cpu()
    importance = layer_normalised(raw, components)
    if objective == "metric" and not importance.any():
        raise ValueError(f"the gradient of metric {problem.metric.name} is zero at the unpatched model, so HISP "
                         "ranks nothing; use method.objective=answer_logit")
    scores_s = round(time.perf_counter() - started, 3)
    # ties: judged on the raw scores' rounding, carried through the per-layer normalisation
    tolerance = tie_tolerance(importance, problem.engine().dtype)
    ranking = component_ranking(problem.graph, importance, tolerance, list(components.names),
                                components.circuit)
    kept, n_kept, curve, chosen = ranked_result(problem, ranking, k, target, max_points, pruned)
    order = sorted(range(len(components)), key=lambda i: -float(importance[i]))
    table = [dict(rank=r, component=components.names[i], importance=float(importance[i]), raw=float(raw[i]))
             for r, i in enumerate(order)]
    return MethodResult(problem.graph, components.edge_scores(importance), kept, parameter=n_kept, curve=curve,
                        tables={"ranking.csv": table}, ranking=ranking,
                        details=dict(objective=objective, n_components=len(components), scores_s=scores_s,
                                     **chosen))
