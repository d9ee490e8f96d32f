"""ACDC: Algorithm 1 of Conmy et al. (2023), greedy edge pruning from the output back.

    circuit <- every edge
    for each visit (a receiver and some of its incoming edges), in the order below:
        if the receiver feeds nothing any more: drop those edges, move on
        for each of those edges, in the order below:
            delta <- metric(circuit without edge) - metric(circuit)
            if delta < tau: remove the edge for good

**The visiting order** is the reference implementation's (ACDC is greedy, so the order changes
which edges are kept).  The graph numbers its edges in exactly this order (``core/graph.py``), so ACDC
visits edges by id, and ``visits`` cuts that list into visits: a receiver and its run of edges.
  receivers   the final residual (``resid_post``), then each layer from the last down to layer 0:
              1. the MLP's input (``m2``);
              2. the q/k/v "nodes", letter-major: the edge ``a2.h<v>`` (v input -> the head) of
                 every head, high index first, then every head's ``<k>`` edge, then every ``<q>``
                 edge (the head's outputs, which the reference visits first, have nothing to test);
              3. the q/k/v inputs in the same order: every head's v input (high to low), then the
                 k inputs, then the q inputs.
              (``graph=heads``: each head's shared input, high index first; ``graph=nodes``: the
              nodes in the sender order below.  Grouped-query attention, which the reference does
              not have: the k and v letters run over the key/value heads ``a2.kv<k>``, high first;
              under ``graph=heads`` a key/value head's shared input follows its first query head's.)
  senders     at one receiver: later layers first, a layer's MLP before its heads, heads high to
              low, the embeddings last, the token embedding before the positional one.
  skipping    a receiver with no outgoing edge left is skipped and its incoming edges dropped
              (score -inf).  For a q/k/v node that receiver is the head: a head whose output feeds
              nothing loses its q/k/v edges, and then its q/k/v inputs their edges.

The metric is a loss (lower is better), so removing an edge that does not hurt by ``tau`` or more
keeps the circuit as faithful as before.  Each edge test is one patched forward that restarts at the
receiver's layer: every edge removed so far lies downstream of it, so the layers below still hold
the unpatched run's values (``engine.SenderCache``).

Batched edge tests (``CandidateTests``) change nothing in the outcome: a test's loss is always the
loss of exactly the circuit it asks about.  When that circuit is not among the last batch's, a new
batch is run: the circuits the next tests read at the same stage will see should ACDC remove every
edge it tests (most edges are removed), and, when speculating, should it keep exactly one of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..core.checkpoint import Checkpointer
from ..core.graph import EdgeMask, Graph
from .result import MethodResult
from .base import Problem


# Forwards of candidate circuits: (mask values [k, n_edges], the stage at which they first differ
# from the unpatched run) -> their k losses (any sequence: ACDC reads only the ones it uses)
LossFn = Callable[[torch.Tensor, int], Sequence[float]]
# batch_edges=auto: extra candidates are nearly free only while one forward is mostly fixed costs
# (kernel launches, Python): on a CPU, while a candidate's activations are small; on a GPU, while
# they fit a memory budget.
AUTO_CPU_MAX_CANDIDATE_BYTES = 4 * 2**20
AUTO_BATCH_BYTES = {"cpu": 256 * 2**20, "cuda": 2**30}
MAX_AUTO_BATCH = 64


@torch.no_grad()
def acdc(problem: Problem, tau: float, abs_delta: bool = False, max_edge_tests: int | None = None,
         batch_edges: int | str = "auto", checkpointer: Checkpointer | None = None) -> MethodResult:
    """ACDC on the fast engine: each edge test restarts at the stage its edge is read, and the
    circuits of the next tests at that stage run together, up to ``batch_edges`` per forward."""
    engine, data = problem.engine("validation"), problem.data("validation")
    logits, cache = engine.run(problem.graph.full_mask(), data.positions, record=True)

    def losses(masks: torch.Tensor, stage: int) -> Sequence[float]:
        logits, _ = engine.run(masks, data.positions, start_stage=stage, cache=cache)
        return LazyLosses(logits, lambda candidate: float(problem.loss(candidate, "validation")))

    if batch_edges == "auto":
        batch_edges = auto_batch_edges(cache.diff, logits)
    return acdc_search(problem.graph, losses, tau, abs_delta, max_edge_tests, progress=problem.progress,
                       dtype=engine.dtype, checkpointer=checkpointer, batch_edges=batch_edges,
                       full_loss=float(problem.loss(logits, "validation")))


class LazyLosses(Sequence):
    """The losses of a batch of candidates, each computed when first read: most of a batch's
    speculative candidates are never used, and the metric is a sizeable part of a small model's test."""

    def __init__(self, logits: torch.Tensor, loss: Callable[[torch.Tensor], float]):
        self.logits, self.loss, self.values = logits, loss, {}

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, row: int) -> float:
        if row not in self.values:
            self.values[row] = self.loss(self.logits[row])
        return self.values[row]


def auto_batch_edges(sender_diffs: torch.Tensor, logits: torch.Tensor) -> int:
    """How many candidate circuits to run per forward.  A candidate recomputes up to every
    sender's activations (``sender_diffs``: [senders, prompts, pos, d_model]) and its ``logits``
    at the metric's positions.  On a CPU a forward of a model that size is compute-bound, so
    batching pays only where those are small (tracr, toy models); on a GPU, candidates fill it up to
    a memory budget.  (``acdc_search`` never batches the nodes graph, whatever this says.)"""
    per_candidate = max(sender_diffs.numel() * sender_diffs.element_size() + logits.numel() * logits.element_size(), 1)
    device = logits.device.type  # where the forwards run (the sender diffs may be kept on the CPU)
    if device == "cpu" and per_candidate > AUTO_CPU_MAX_CANDIDATE_BYTES:
        return 1
    return max(1, min(MAX_AUTO_BATCH, AUTO_BATCH_BYTES.get(device, AUTO_BATCH_BYTES["cuda"]) // per_candidate))


def feeds_nothing(graph: Graph, mask: torch.Tensor, receiver: str) -> bool:
    """No kept edge leaves ``receiver``: its inputs cannot matter (not used on the nodes graph,
    whose 'receivers' are the nodes themselves)."""
    return graph.granularity != "nodes" and receiver != "resid_post" and not mask[graph.outgoing[receiver]].any()


@dataclass
class Step:
    """One upcoming edge test, and the edges ACDC drops untested just before it (the inputs of
    receivers that will feed nothing)."""

    edge: int
    dropped: list[int]


def visits(graph: Graph) -> list[tuple[str, list[int]]]:
    """ACDC's visits in order: (receiver, the incoming edges it tests there), one per run of
    consecutive edge ids into one receiver.  A head is visited three times in the qkv graph (its
    v, k and q edges sit in their letter's group), every other receiver once."""
    out: list[tuple[str, list[int]]] = []
    for e in graph.edges:
        if out and out[-1][0] == e.receiver:
            out[-1][1].append(e.index)
        else:
            out.append((e.receiver, [e.index]))
    return out


def upcoming_tests(graph: Graph, order: list[tuple[str, list[int]]], mask: torch.Tensor, decided: torch.Tensor,
                   visit_index: int, edge: int, limit: float) -> list[Step]:
    """The tests ACDC will run from ``edge`` (an edge of the ``visit_index``-th visit of ``order``)
    on, at most ``limit``, all read at ``edge``'s stage, should it remove every edge it tests."""
    stage = graph.edges[edge].stage
    assumed = mask.clone()  # the circuit as it would be after those removals
    steps: list[Step] = []
    dropped: list[int] = []
    for index in range(visit_index, len(order)):
        receiver, incoming = order[index]
        if index == visit_index:
            edges = incoming[incoming.index(edge):]
        elif any(graph.edges[e].stage != stage for e in incoming):
            break  # the next stage: a batch restarts at one stage only
        elif feeds_nothing(graph, assumed, receiver) and not bool(decided[incoming].all()):
            dropped += incoming
            assumed[incoming] = 0
            continue
        else:
            edges = incoming
        for e in edges:
            if decided[e]:
                continue
            steps.append(Step(e, dropped))
            dropped = []
            assumed[e] = 0
            if len(steps) >= limit:
                return steps
    return steps


def expected_tests(k: int, keep_rate: float, speculate: bool) -> float:
    """Expected number of usable tests in a batch of ``k`` when each tested edge is kept with
    probability ``keep_rate``: test j is usable while none (or, speculating, at most one) of the
    j edges before it was kept."""
    p, q = keep_rate, 1 - keep_rate
    return sum(q ** j + (j * p * q ** (j - 1) if speculate else 0) for j in range(k))


def candidate_masks(before: torch.Tensor, steps: list[Step], n_candidates: int, keep_rate: float) -> torch.Tensor:
    """The circuits of the next tests, [c, n_edges], from the circuit ``before`` the first one.

    Plain: the j-th test's circuit should every earlier tested edge be removed, for up to
    ``n_candidates`` tests.  Speculative: also the j-th test's circuit should exactly one earlier
    edge i have been kept: k(k+1)/2 candidates for k tests.  The plan with more expected usable
    tests wins (plain when equal)."""
    n_plain = min(len(steps), n_candidates)
    n_speculative = min(len(steps), (math.isqrt(8 * n_candidates + 1) - 1) // 2)
    speculate = expected_tests(n_speculative, keep_rate, True) > expected_tests(n_plain, keep_rate, False)
    k = n_speculative if speculate else n_plain
    # (kept i, tested j) per candidate; i = -1: none kept
    pairs = [(-1, j) for j in range(k)] + ([(i, j) for i in range(k) for j in range(i + 1, k)] if speculate else [])
    kept, tested = torch.tensor(pairs).T
    step = torch.arange(k)
    reached = step[None, :] <= tested[:, None]  # [c, k]: step t is behind candidate's test j
    masks = before.repeat(len(pairs), 1)
    test_edges = torch.tensor([s.edge for s in steps[:k]])
    masks[:, test_edges] = torch.where(reached & (step[None, :] != kept[:, None]), 0, before[test_edges])
    dropped = [(t, e) for t, s in enumerate(steps[:k]) for e in s.dropped]
    if dropped:
        at, edges = torch.tensor(dropped).T
        masks[:, edges] = torch.where(reached[:, at], 0, before[edges])
    return masks


class CandidateTests:
    """Edge tests answered from batched forwards of up to ``n_candidates`` circuits.

    ``loss(mask, ...)`` is the loss of exactly the circuit ``mask``: from the last batch when it
    holds that circuit, else from a new batch planned from this test on (``upcoming`` gives the
    tests ahead, ``candidate_masks`` their circuits).  So batching changes how many forwards ACDC
    runs, never what it decides."""

    def __init__(self, losses: LossFn, n_candidates: int):
        self.losses, self.n_candidates = losses, n_candidates
        self.masks: torch.Tensor | None = None
        self.values: Sequence[float] = ()
        self.n_forwards = 0

    def loss(self, mask: torch.Tensor, stage: int, upcoming: Callable[[], list[Step]], keep_rate: float) -> float:
        if self.masks is not None:
            hit = (self.masks == mask).all(1).nonzero()
            if len(hit):
                return self.values[int(hit[0])]
        if self.n_candidates == 1:
            self.masks = mask[None].clone()
        else:
            steps = upcoming()
            before = mask.clone()
            before[steps[0].edge] = 1
            self.masks = candidate_masks(before, steps, self.n_candidates, keep_rate)
        self.values = self.losses(self.masks, stage)
        self.n_forwards += 1
        return self.values[0]  # the first candidate is always this test's circuit


def acdc_search(graph: Graph, losses: LossFn, tau: float, abs_delta: bool = False,
                max_edge_tests: int | None = None, progress: bool = True,
                dtype: torch.dtype = torch.float32, checkpointer: Checkpointer | None = None,
                batch_edges: int = 1, full_loss: float | None = None) -> MethodResult:
    """Algorithm 1 over ``graph``, given any way of computing the losses of candidate circuits
    (``full_loss``: the full circuit's, when already known).

    With a ``checkpointer`` the state (mask, scores, trace, current loss) is saved between edge
    tests and a resumed run skips every edge already decided, so it ends exactly as an
    uninterrupted run would (the current loss is restored, not recomputed)."""
    saved = checkpointer.restore() if checkpointer is not None else None
    if saved is None:
        mask = torch.ones(graph.n_edges, dtype=dtype)
        current = losses(mask[None], 0)[0] if full_loss is None else full_loss
        # Score = how much removing the edge hurt when it was tested; an edge dropped untested
        # because its receiver fed nothing scores -inf; one never reached (max_edge_tests) +inf.
        scores = torch.full((graph.n_edges,), math.inf, dtype=torch.float64)
        trace: list[dict] = []
    else:
        mask, scores, trace, current = saved["mask"].to(dtype), saved["scores"], saved["trace"], saved["current"]
    n_tests, n_kept_tests = len(trace), sum(row["kept"] for row in trace)
    decided = ~torch.isposinf(scores)
    # The nodes graph's edges are read at several stages: its tests cannot share a forward.
    tests = CandidateTests(losses, 1 if graph.granularity == "nodes" else batch_edges)

    def state() -> dict:
        return dict(mask=mask.clone(), scores=scores.clone(), trace=list(trace), current=current)

    def budget_left() -> bool:
        return max_edge_tests is None or n_tests < max_edge_tests

    bar = tqdm(total=graph.n_edges, initial=int(decided.sum()), desc="ACDC", unit="edge",
               disable=not progress, leave=False)
    order = visits(graph)
    for index, (receiver, incoming) in enumerate(order):
        if not budget_left():
            break
        if bool(decided[incoming].all()):  # done before a resume
            continue
        if feeds_nothing(graph, mask, receiver):
            mask[incoming] = 0  # the receiver feeds nothing: its inputs cannot matter
            scores[incoming] = -math.inf
            bar.update(len(incoming))
            continue
        for e in incoming:
            if not budget_left():
                break
            if decided[e]:
                continue
            mask[e] = 0
            limit = math.inf if max_edge_tests is None else max_edge_tests - n_tests
            candidate = tests.loss(mask, graph.edges[e].stage,
                                   upcoming=lambda: upcoming_tests(graph, order, mask, decided, index, e, limit),
                                   keep_rate=(n_kept_tests + 1) / (n_tests + 2))  # Laplace: never 0 or 1
            delta = candidate - current
            removed = (abs(delta) if abs_delta else delta) < tau
            if removed:
                current = candidate
            else:
                mask[e] = 1
                n_kept_tests += 1
            n_tests += 1
            scores[e] = delta
            trace.append(dict(step=n_tests, edge=graph.edges[e].name, delta=delta, loss=current,
                              kept=not removed, n_edges=int(mask.sum())))
            bar.update(1)
            bar.set_postfix_str(f"{receiver} | {int(mask.sum())} edges left", refresh=False)
            if checkpointer is not None:
                checkpointer.step(state)
    bar.close()

    # details: how the tests were batched (forwards counted since the last resume)
    return MethodResult(graph, scores, EdgeMask(graph, mask.bool()), parameter=tau, trace=trace,
                      details=dict(batch_edges=tests.n_candidates, n_test_forwards=tests.n_forwards))
