"""Subnetwork Probing (Cao et al. 2021) as the ACDC paper runs it: learn a mask over model components.

Each component (a head's q, k or v input, an MLP's output; see ``components``) has a hard-concrete
gate z (Louizos et al. 2018) that mixes its clean and ablated activation, ``z * clean + (1 - z) *
ablated``, where ablated is the corrupted run's activation (zero ablation: the run with every sender
zeroed).  The gates are float masks on the patching engine's edges, so one forward of
``problem.engine`` is one forward of the gated model and the model weights are never touched.  Training minimises

    task loss (KL by default) + lambda * mean over gates of P(gate open)

with Adam on the gates' log-alphas, full batch, one fresh gate sample per step.  Afterwards a gate
is kept where log-alpha > 0, i.e. where Louizos' test-time gate ``clamp(sigmoid(log_alpha) *
(zeta - gamma) + gamma, 0, 1)`` is above 1/2; the kept components become a circuit (every edge
between kept nodes) and each edge scores its gates' open probability.

``gates=edges`` (beyond the paper) trains one gate per edge of the graph instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..core.checkpoint import Checkpointer
from ..core.graph import EdgeMask
from .result import MethodResult
from .base import Problem
from .components import Components


@dataclass(frozen=True)
class HardConcrete:
    """The stretched and clipped binary-concrete distribution of Louizos et al. (2018)."""

    beta: float = 2 / 3  # temperature
    gamma: float = -0.1  # stretch interval (gamma, zeta) around [0, 1]
    zeta: float = 1.1

    def __post_init__(self):
        if not (self.beta > 0 and self.gamma < 0 and self.zeta > 1):
            raise ValueError(f"hard-concrete needs beta > 0, gamma < 0, zeta > 1; got {self}")

    def initial_log_alpha(self, open_value: float) -> float:
        """The log-alpha whose test-time gate is ``open_value`` (0.9 in the paper's code: the
        gates start almost fully open)."""
        p = (open_value - self.gamma) / (self.zeta - self.gamma)
        return math.log(p / (1 - p))

    def sample(self, log_alpha: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        """Gate values in [0, 1] (exactly 0 or 1 with positive probability), reparameterised by
        ``uniform`` ~ U(0, 1) so that gradients reach log-alpha."""
        s = torch.sigmoid((torch.log(uniform) - torch.log1p(-uniform) + log_alpha) / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def test_gate(self, log_alpha: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(log_alpha) * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def prob_open(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """P(z > 0): the expected L0 norm of one gate, what the penalty counts."""
        return torch.sigmoid(log_alpha - self.beta * math.log(-self.gamma / self.zeta))


# A gate that moved less than this fraction of the way from its start to the keep threshold
# (log-alpha 0) has barely moved; when most have, the training was too short for its learning rate.
STALLED_FRACTION = 0.25


def stalled_gates_warning(log_alpha: torch.Tensor, initial: float, epochs: int, lr: float) -> str | None:
    """A warning when most gates still sit near their initial value, saying what to raise.

    Adam moves a parameter by about ``lr`` per step, so closing a gate that starts at ``initial``
    takes at least ``|initial| / lr`` steps; fewer leave every gate open and the circuit whole."""
    distance = max(STALLED_FRACTION * abs(initial), 0.1)
    n_stalled = int(((log_alpha - initial).abs() < distance).sum())
    if 2 * n_stalled <= log_alpha.numel():
        return None
    return (f"SP: {n_stalled}/{log_alpha.numel()} gates barely moved from their initial value in {epochs} steps at "
            f"lr {lr:g} (Adam moves a gate about lr per step; closing one takes about {abs(initial):.2g}): "
            f"raise method.epochs or method.lr")


def subnetwork_probing(problem: Problem, lambda_reg: float = 1.0, epochs: int = 3000, lr: float = 1e-3,
                       gates: str = "components", init_open: float = 0.9, beta: float = 2 / 3,
                       gamma: float = -0.1, zeta: float = 1.1, log_every: int = 10, seed: int = 0,
                       checkpointer: Checkpointer | None = None) -> MethodResult:
    graph = problem.graph
    engine, data = problem.engine("validation"), problem.data("validation")
    device, dtype = engine.device, engine.dtype
    concrete = HardConcrete(beta, gamma, zeta)

    components = Components(graph) if gates == "components" else None
    if components is not None and len(components) == 0:
        raise ValueError(f"the {graph.describe()} has no component SP can gate")
    n_gates = len(components) if components is not None else graph.n_edges

    def to_edges(values: torch.Tensor) -> torch.Tensor:
        return components.edge_mask_values(values) if components is not None else values

    log_alpha = torch.full((n_gates,), concrete.initial_log_alpha(init_open), dtype=dtype, device=device,
                           requires_grad=True)
    optimizer = torch.optim.Adam([log_alpha], lr=lr)
    # A private generator: the gate noise depends on the seed only, not on what ran before.
    generator = torch.Generator(device=device).manual_seed(seed)
    tiny = torch.finfo(dtype).eps  # keeps log(u) and log(1 - u) finite
    log: list[dict] = []
    first_step = 0

    # A checkpoint holds everything the next step depends on (gates, Adam's moments, the noise
    # generator), so a resumed run takes exactly the steps an uninterrupted one would.
    saved = checkpointer.restore() if checkpointer is not None else None
    if saved is not None:
        with torch.no_grad():
            log_alpha.copy_(saved["log_alpha"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        log, first_step = saved["log"], saved["next_step"]

    def state(next_step: int) -> dict:
        return dict(log_alpha=log_alpha.detach().cpu().clone(), optimizer=optimizer.state_dict(),
                    generator=generator.get_state(), log=list(log), next_step=next_step)

    bar = tqdm(range(first_step, epochs), initial=first_step, total=epochs, desc=f"SP lambda={lambda_reg:g}",
               unit="step", disable=not problem.progress, leave=False)
    for step in bar:
        uniform = torch.rand(n_gates, generator=generator, device=device, dtype=dtype).clamp(tiny, 1 - tiny)
        z = concrete.sample(log_alpha, uniform)
        logits = engine.logits(to_edges(z), data.positions)
        task_loss = problem.loss(logits, "validation")
        expected_open = concrete.prob_open(log_alpha).mean()
        loss = task_loss + lambda_reg * expected_open
        optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:  # lambda 0 with every sampled gate clipped at 1 has no gradient
            loss.backward()
            optimizer.step()
        if step % log_every == 0 or step == epochs - 1:
            n_open = int((log_alpha > 0).sum())
            log.append(dict(step=step, loss=loss.item(), task_loss=task_loss.item(),
                            expected_open=expected_open.item(), n_open=n_open))
            bar.set_postfix_str(f"loss {loss.item():.4g} | {n_open}/{n_gates} gates open", refresh=False)
        if checkpointer is not None:
            checkpointer.step(lambda: state(step + 1))
    bar.close()

    log_alpha = log_alpha.detach()
    keep = log_alpha > 0  # test-time gate above 1/2
    prob_open = concrete.prob_open(log_alpha)
    if components is not None:
        kept = components.circuit(keep)
        scores = components.edge_scores(prob_open, ungated=1.0)
        gate_names = components.names
    else:
        kept = EdgeMask(graph, keep.cpu())
        scores = prob_open.cpu().double()
        gate_names = [e.name for e in graph.edges]
    gate_table = [dict(gate=name, log_alpha=float(a), prob_open=float(p), test_gate=float(t), kept=bool(k))
                  for name, a, p, t, k in zip(gate_names, log_alpha.tolist(), prob_open.tolist(),
                                              concrete.test_gate(log_alpha).tolist(), keep.tolist())]
    final = log[-1] if log else {}
    warning = stalled_gates_warning(log_alpha, concrete.initial_log_alpha(init_open), epochs, lr)
    return MethodResult(
        graph, scores, kept, parameter=lambda_reg,
        label="sp" if gates == "components" else "sp_edges",  # the report keeps the two apart
        tables={"training.csv": log, "gates.csv": gate_table},
        details=dict(gates=gates, n_gates=n_gates, n_gates_kept=int(keep.sum()), epochs=epochs, lr=lr,
                     final_loss=final.get("loss"), final_task_loss=final.get("task_loss"), warning=warning))
