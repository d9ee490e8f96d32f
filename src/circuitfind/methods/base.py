"""What a method may use: a ``Problem`` bundles the task's prompts and metric, the graph, the
ablation kind and the patching engines (built on demand).  It is a method's only interface to the
model: patched logits of any (fractional, differentiable) mask, losses, and the gradient of a
per-prompt objective with respect to gates on the mask.  Methods never build hook names or read the
engine's or the task's internals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..engine import PatchEngine, choose_activation_device, make_ablation, stored_activation_bytes
from ..core.graph import EdgeMask, Graph
from ..core.metrics import Metric
from ..tasks.base import Task, TaskData


@dataclass
class Problem:
    task: Task
    graph: Graph
    corruption: str
    metric: Metric
    progress: bool = True
    shuffle_positions: bool = False  # corruption.shuffle_positions: the corrupted run's positions permuted
    activation_device: str = "auto"  # model.activation_device: where the engines keep their stored activations
    _engines: dict[str, PatchEngine] = field(default_factory=dict, repr=False)
    _clean_logits: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def data(self, split: str) -> TaskData:
        if split not in ("validation", "test"):
            raise ValueError(f"unknown split {split!r}")
        return getattr(self.task, split)

    def engine(self, split: str = "validation") -> PatchEngine:
        if split not in self._engines:
            data, model = self.data(split), self.task.model
            needed = stored_activation_bytes(self.graph, model.cfg, *data.clean.shape)
            where = choose_activation_device(self.activation_device, next(model.parameters()).device, needed)
            ablation = make_ablation(self.corruption, model, self.graph, data.clean, data.corrupted,
                                     shuffle_positions=self.shuffle_positions, activation_device=where)
            self._engines[split] = PatchEngine(model, self.graph, data.clean, ablation, activation_device=where)
        return self._engines[split]

    @property
    def n_forward(self) -> int:
        """Forward passes run so far by this problem's engines (every split)."""
        return sum(engine.n_forward for engine in self._engines.values())

    def activation_devices(self) -> dict[str, str]:
        """Where each split's engine (those built so far) keeps its stored activations."""
        return {split: engine.activation_device for split, engine in self._engines.items()}

    @torch.no_grad()
    def clean_logits(self, split: str = "validation") -> torch.Tensor:
        """The full model's logits at the metric positions: what KL compares against."""
        if split not in self._clean_logits:
            self._clean_logits[split] = self.engine(split).logits(self.graph.full_mask(), self.data(split).positions)
        return self._clean_logits[split]

    def know_clean_logits(self, logits: torch.Tensor, split: str = "validation") -> None:
        """``logits``: a run at the full mask (every edge kept) at the split's positions.  They are
        the clean logits, so a gradient method that runs the full mask anyway (EAP) saves the
        separate clean run."""
        self._clean_logits.setdefault(split, logits.detach())

    def per_prompt(self, logits: torch.Tensor, split: str = "validation", metric: Metric | None = None) -> torch.Tensor:
        """The metric of patched ``logits`` (at the split's positions) for each prompt, in its own sign."""
        return (metric or self.metric).per_prompt(logits, self.clean_logits(split), self.data(split))

    def loss(self, logits: torch.Tensor, split: str = "validation") -> torch.Tensor:
        """Mean metric signed so that lower is better (differentiable): what methods minimise."""
        return self.metric.loss(logits, self.clean_logits(split), self.data(split))

    def logits(self, mask: EdgeMask | torch.Tensor, split: str = "validation") -> torch.Tensor:
        """The patched model's logits at the split's metric positions [batch, k, vocab]: every edge
        kept to its mask value (fractions mix the sender's value with its ablated one; differentiable
        in a mask that requires grad)."""
        return self.engine(split).logits(mask, self.data(split).positions)

    def gate_gradients(self, to_mask: Callable[[torch.Tensor], torch.Tensor], n_gates: int,
                       objective: Callable[[torch.Tensor], torch.Tensor], split: str = "validation") -> torch.Tensor:
        """d F_p / d g_i at the full model (every gate 1), for each prompt p and gate i: [batch, n_gates].

        ``to_mask`` maps gate values [n_gates] to mask values [n_edges] (differentiably: a gate may
        set several edges), ``objective`` patched logits to one value per prompt, F_p.  Prompts do
        not interact in the forward, but a mask shared by all prompts sums their gradients, so each
        prompt's row is its own backward pass through one shared forward (vectorised over prompts)."""
        engine = self.engine(split)
        gates = torch.ones(n_gates, dtype=engine.dtype, device=engine.device, requires_grad=True)
        with torch.enable_grad():
            per_prompt = objective(self.logits(to_mask(gates), split))
            rows = torch.eye(len(per_prompt), dtype=per_prompt.dtype, device=per_prompt.device)
            (grads,) = torch.autograd.grad(per_prompt, gates, grad_outputs=rows, is_grads_batched=True,
                                           allow_unused=True)
        if grads is None:  # no gate reaches the objective
            return torch.zeros(len(per_prompt), n_gates, dtype=torch.float64, device=engine.device)
        return grads.double()

    @torch.no_grad()
    def evaluate(self, mask, split: str = "validation", metric: Metric | None = None,
                 nodes_only: bool = False) -> float:
        """Mean metric of the circuit ``mask`` on ``split`` (in the metric's own sign).  ``nodes_only``:
        computed from the circuit's needed nodes only (``PatchEngine.circuit_logits``: the same
        logits, cheaper for a circuit that removes most edges)."""
        engine = self.engine(split)
        run = engine.circuit_logits if nodes_only else engine.logits
        logits = run(mask, self.data(split).positions)
        return float(self.per_prompt(logits, split, metric).mean())
