"""ACDC guided by attribution: ACDC's circuits from far fewer exact forwards.

ACDC (``methods/acdc.py``) removes an edge when one exact patched forward shows that the circuit
without it has a loss less than ``tau`` above the current circuit's, and it runs one such test per
edge.  This method keeps that meaning -- nothing leaves the circuit unless an exact forward of the
circuit without it shows a loss rise below ``tau`` -- but tests edges in groups, and lets
attribution (EAP through the engine's gradient) decide which edges to try together:

    circuit <- every edge;  L <- loss(circuit)
    for each block, from the output back (``group=receiver``: ACDC's visits, one receiver each;
    ``group=stage``: ACDC's visits cut where the stage changes, or where a receiver of the block
    feeds an edge of the block):
        drop the inputs of receivers that feed nothing (as ACDC: untested, score -inf)
        order the block's other edges by |attribution| on the current circuit, weakest first
        while edges are left: settle(the next group: the weakest edges, or once the loss budget
                                     is calibrated, edges packed to it)
    settle(G):
        L' <- loss(circuit without G)              one exact forward (none if evaluated before)
        if L' - L < tau:   remove G;  L <- L'      (a group removal is an ACDC step)
        elif |G| == 1:     keep it; its score is L' - L
        else:              settle(weaker part of G); settle(stronger part of G)

Every decision reads exact losses; attribution only orders and sizes the tests, so a poor ranking
costs forwards, never faithfulness: each accepted step raises the loss by less than ``tau``, and an
edge is kept only when removing it alone raises the loss by ``tau`` or more.  When edges act
independently and never help, a group hurts by at least as much as each of its edges, so the kept
set is exactly plain ACDC's.

Group sizes and splits (``split=mass``): each edge gets a chance of being kept, the expected number
kept (the keep rate seen so far times the edges left) spread half in proportion to attribution and
half evenly.  A group is the weakest edges whose chances sum to at most ln 2 (it passes about half
the time), and a failed group splits where half its chance lies: bisection when chances are equal,
the strongest edge alone when attribution puts most of the chance on it.  ``split=half``: groups of
2^floor(log2((1 - p) / p)) edges for keep rate p (Hwang's generalised binary splitting) and
bisection.  With K of a block's N edges kept and no help from the ranking, either needs about
K + K log2(N / K) tests.

A group can also fail with no kept edge in it: where most edges each raise the loss a little (on
GPT-2's shape at tau 0.001, about 1e-4 each), a hundred of them raise it by ten tau.  ``budget``
(split=mass) caps each group's predicted rise -- its attribution sum times the rise per unit of
attribution seen in the tests so far (``LossRise``) -- at budget x tau, and cuts a failed group into
runs that each fit.  Once calibrated, groups are packed to the budget (``LossRise.pack``): the
strongest edges that fit together, then the weakest to fill it, so that edges of a third to a half of
tau share a group with weak ones instead of going alone.  Every accepted step raises the loss by
less than tau, so a search that ends at loss rise dL with K kept edges runs at least K + dL / tau
tests, whatever its ranking; and one that settles the same blocks in the same order with the same
decisions climbs each block's share of dL on its own, in at least one step where the block removes
anything (``tests_floor_blocks``: K plus floor(climb / tau) + 1 for each such block; blocks joined
by a carried remainder count as one).

Carry (``carry``, split=mass with a budget): a block's last group costs a test of its own even when
its predicted rise is a small part of the budget (on GPT-2's shape, layer 0's query, key and value
inputs took 33 tests, one per block of one or two edges). When a group fits the budget and it and
what is carried hold at most ``carry_chance`` (0.1) kept edges by their chances, it is not tested but
carried: the next group (the block's, or the next block's first) is packed beside it and the two go
in one test. Once the budget is calibrated, an edge's chance is at most its predicted rise over tau
(Markov: it is kept only where its rise alone reaches tau), so edges attribution finds harmless are
carried however many edges around them are kept (on GPT-2's shape, layer 0's query inputs). Where
nothing fits beside the carried edges (each edge left rises by most of the budget: on GPT-2's
shape, an MLP's input from an earlier MLP), the group that follows them joins
them where the two are predicted to rise by less than tau (``n_joined_groups``). Where a union
fails, the carried edges are settled first, as their own groups would have been, with the next
group's edges still in the circuit (ACDC's order), then the same group (once the carried edges go
in one test, its circuit is the failed union's: no forward): a failed union costs a test only where
the carried edges alone fail. A block whose receiver feeds the circuit only
through carried edges (or through inputs of such blocks) waits: whether it feeds anything is known
once they are settled, and it is visited then, before the next group, with carry off (ACDC's order);
when a union passes, such receivers feed nothing and their inputs go untested, as in ACDC (on
GPT-2's shape, a layer's heads wait on the remainder of the MLP after them, and the MLP before them,
which also feeds the output, is packed beside it). When edges act independently and never help, a
union that passes holds only edges each block would have removed, so the kept set is still plain
ACDC's. Single-input blocks have no attribution pass of their own; the pass of the block before them
scores them too. Those scores, read ahead on a larger circuit, are calibrated apart, on tests of
read-ahead inputs alone, and enter the budget in the units of the blocks' own passes (on GPT-2's
shape, the main calibration put layer 0's key inputs above tau in pairs that rose by 0.86-0.99 tau).

Costs are counted where the engine runs: ``n_edge_tests`` (the trace's rows) is the number of
distinct candidate circuits whose exact loss was read, as ACDC's; a circuit met again (after the
weak half of a failed group is removed, the whole group's circuit is the next test's) is answered
from memory.  On small models the engine runs several candidate circuits per forward
(``batch_edges``): the next prefixes of the group's order, which are the circuits bisection reads
while weak halves pass; unread candidates are not counted.

Orders: ``eap_ig`` (the default: the gradient averaged along the path from the empty circuit to
the current one, ``ig_steps`` points), ``eap`` (the gradient of the loss with respect to the mask at
the current circuit; at the full model a divergence metric has zero gradient, so there the clean
answer's logit is used, as EAP's ``objective=auto``), ``random`` (seeded), ``graph`` (ACDC's own
order).  On GPT-2's shape at tau 0.001, EAP-IG ranks the edges ACDC keeps first at every receiver
measured (Spearman 0.68-1.0 with the exact single-edge rises), EAP at 0.19-0.34, placing kept
output edges as low as 116th of 157.  ``rescore`` recomputes the order on the current circuit at
every block (``ig_steps`` forwards and backwards each; one for ``eap``), else once at the start.

Checkpoints hold the exact losses and attributions read so far: a resumed run replays the search
from them without forwards and ends exactly as an uninterrupted run would.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..core.checkpoint import Checkpointer
from ..core.graph import EdgeMask, Graph
from .acdc import LazyLosses, auto_batch_edges, feeds_nothing, visits
from .base import Problem
from .exact_losses import ExactLosses, LossFn, prefix_plan
from .guided_blocks import blocks, feeds_only_through
from .guided_order import ScoreFn, attribution_order
from .group_sizes import (PRIOR_WEIGHT, WINDOW, LossRise, capped_chances, group_size, keep_chances, mass_group_size,
                          mass_split)
from .result import MethodResult

# A group is carried only when it and what is carried already hold at most this many kept edges by
# their chances (``keep_chances``; ``carry_chance``): the union with the next group then fails for a
# kept edge of the carried ones about one time in ten (1 - exp(-0.1)), which costs one test more
# than testing them alone (any other failure costs none: see ``settle_block``).  ln 2 is the
# break-even where unions pass whenever their carried edges do (the README measures both).
CARRY_CHANCE = 0.1


@torch.no_grad()
def acdc_guided(problem: Problem, tau: float, order: str = "eap_ig", group: str = "receiver", rescore: bool = True,
                ig_steps: int = 3, seed: int = 0, abs_delta: bool = False, max_edge_tests: int | None = None,
                batch_edges: int | str = "auto", split: str = "mass", budget: float = 0.75, carry: bool = True,
                carry_chance: float = CARRY_CHANCE, checkpointer: Checkpointer | None = None) -> MethodResult:
    """Guided ACDC on the fast engine (see the module docstring)."""
    return guided_on_engine(problem, tau, order, group, rescore, ig_steps, seed, abs_delta, max_edge_tests,
                            batch_edges, checkpointer, split=split, budget=budget, carry=carry,
                            carry_chance=carry_chance)


def guided_on_engine(problem: Problem, tau: float, order: str = "eap_ig", group: str = "receiver", rescore: bool = True,
                     ig_steps: int = 3, seed: int = 0, abs_delta: bool = False, max_edge_tests: int | None = None,
                     batch_edges: int | str = "auto", checkpointer: Checkpointer | None = None,
                     on_test: Callable | None = None, split: str = "mass", budget: float = 0.75,
                     carry: bool = True, carry_chance: float = CARRY_CHANCE) -> MethodResult:
    """``acdc_guided``, telling ``on_test`` every decision (see ``guided_search``)."""
    engine, data, graph = problem.engine("validation"), problem.data("validation"), problem.graph
    logits, cache = engine.run(graph.full_mask(), data.positions, record=True)

    def losses(masks: torch.Tensor, stage: int) -> Sequence[float]:
        out, _ = engine.run(masks, data.positions, start_stage=stage, cache=cache)
        return LazyLosses(out, lambda candidate: float(problem.loss(candidate, "validation")))

    if batch_edges == "auto":
        batch_edges = auto_batch_edges(cache.diff, logits)
    result = guided_search(graph, losses, attribution_order(problem, order, ig_steps, seed), tau, group=group,
                           rescore=rescore, abs_delta=abs_delta, max_edge_tests=max_edge_tests,
                           progress=problem.progress, dtype=engine.dtype, checkpointer=checkpointer,
                           batch_edges=batch_edges, full_loss=float(problem.loss(logits, "validation")),
                           on_test=on_test, split=split, weighted=order in ("eap", "eap_ig"), budget=budget,
                           carry=carry, carry_chance=carry_chance)
    # Verification: the final circuit's loss from one full forward (no restart, no cache), beside the
    # loss the search accepted it with.
    final = float(problem.loss(engine.logits(result.circuit.values.to(engine.dtype), data.positions), "validation"))
    searched = result.details["final_loss_search"]
    result.details["final_loss_verified"] = final
    if not math.isclose(final, searched, rel_tol=1e-4, abs_tol=1e-6):
        result.details["warning"] = (f"acdc_guided: the final circuit's loss from a full forward ({final:.6g}) differs "
                                     f"from the search's ({searched:.6g})")
    return result


def guided_search(graph: Graph, losses: LossFn, importance: ScoreFn, tau: float, group: str = "receiver",
                  rescore: bool = True, abs_delta: bool = False, max_edge_tests: int | None = None,
                  progress: bool = True, dtype: torch.dtype = torch.float32,
                  checkpointer: Checkpointer | None = None, batch_edges: int = 1, full_loss: float | None = None,
                  on_test: Callable[[torch.Tensor, torch.Tensor, float, float, bool], None] | None = None,
                  split: str = "mass", weighted: bool = True, budget: float = 0.0,
                  carry: bool = False, carry_chance: float = CARRY_CHANCE) -> MethodResult:
    """The search over ``graph`` given any way of computing candidate circuits' losses and any
    ordering (see the module docstring).  ``on_test(before, after, loss_before, loss_after, accepted)``
    is called for every group decision (tests use it to check decisions independently).
    ``weighted``: ``importance`` returns magnitudes (attribution), not only an order; ``budget``
    (split=mass, weighted): a group's predicted loss rise at most ``budget`` x tau (0: no limit)."""
    saved = checkpointer.restore() if checkpointer is not None else None
    replay_losses = saved["losses"] if saved is not None else []
    replay_scores = list(saved["attributions"]) if saved is not None else []
    # The nodes graph's edges are read at several stages: its candidates cannot share a forward.
    exact = ExactLosses(losses, 1 if graph.granularity == "nodes" else batch_edges, replay_losses)
    attributions: list[torch.Tensor] = []

    def scored(mask: torch.Tensor, edges: list[int]) -> torch.Tensor:
        if len(attributions) < len(replay_scores):
            value = replay_scores[len(attributions)]
        else:
            value = importance(mask, edges).double().cpu()
        attributions.append(value)
        return value

    mask = torch.ones(graph.n_edges, dtype=dtype)
    current = losses(mask[None], 0)[0] if full_loss is None else full_loss
    scores = torch.full((graph.n_edges,), math.inf, dtype=torch.float64)
    decided = torch.zeros(graph.n_edges, dtype=torch.bool)
    trace: list[dict] = []
    groups: list[dict] = []  # per test: its group's attribution sum and the rise the budget predicted
    n_accepted = n_decided = n_kept_decided = 0  # accepted group removals; edges decided by tests, kept of them
    removed_stage = 2 * graph.n_layers  # lowest stage of any removed edge: a restart may begin no later
    # tests_floor_blocks: the accepted steps that no search settling these blocks in this order, with
    # these decisions, can do without (each block's loss climb in steps below tau); the kept edges'
    # tests are added at the end
    stats = dict(n_blocks=0, n_attribution_passes=0, tests_floor_blocks=0, n_carried_groups=0,
                 n_carried_failed=0, n_joined_groups=0, n_blocks_waited=0)
    bar = tqdm(total=graph.n_edges, desc="ACDC (guided)", unit="edge", disable=not progress, leave=False)

    def state() -> dict:
        return dict(losses=list(exact.log), attributions=list(attributions))

    def budget_left() -> bool:
        return max_edge_tests is None or len(trace) < max_edge_tests

    chance: dict[int, float] = {}  # split=mass: each undecided edge's chance of being kept, set per group
    weight: dict[int, float] = {}  # each undecided edge's attribution, set per block
    read_ahead: dict[int, float] = {}  # single inputs whose attribution was read ahead, and that attribution

    def attribution_sum(edges: list[int]) -> float:
        """The edges' attribution as the budget counts it (``LossRise.pack``: below 0 counts as 0)."""
        return sum(max(weight.get(e, 0.0), 0.0) for e in edges)

    rise = LossRise(budget * tau if split == "mass" and weighted else 0.0)
    rise_ahead = LossRise(rise.limit)  # the same, calibrated on groups of read-ahead inputs only

    def split_at(edges: list[int]) -> int:
        if split == "half":
            return len(edges) // 2
        return mass_split(torch.tensor([chance[e] for e in edges], dtype=torch.float64))

    def parts_of(edges: list[int]) -> list[list[int]]:
        """A failed group's parts: consecutive runs that each fit the loss budget when the budget
        (calibrated again with this failure) holds more than one of them; else two, at ``split_at``."""
        sizes = rise.partition([weight[e] for e in edges])
        if len(sizes) < 2:
            cut = split_at(edges)
            return [edges[:cut], edges[cut:]]
        out, start = [], 0
        for size in sizes:
            out.append(edges[start:start + size])
            start += size
        return out

    def test(edges: list[int], stage: int) -> bool:
        """Try removing ``edges`` (a group); True when removed."""
        nonlocal current, n_accepted, removed_stage, n_decided, n_kept_decided
        candidate = mask.clone()
        candidate[edges] = 0
        start = min(stage, removed_stage)
        # a batch shares the restart at ``start``: only a group read there (not a union across stages,
        # not a waiting block's group above an earlier removal) runs its next circuits beside it
        shared = all(graph.edges[e].stage == start for e in edges)
        loss, fresh = exact.loss(candidate, start, lambda: prefix_plan(
            mask, edges, exact.n_candidates - 1, lambda lo, hi: lo + split_at(edges[lo:hi])) if shared else [])
        delta = loss - current
        if fresh:
            attribution = attribution_sum(edges)
            groups.append(dict(step=len(trace) + 1, n_edges=len(edges), attribution=attribution,
                               predicted_rise=rise.predict(attribution), delta=delta, calibrates=""))
            # calibrated on groups scored by their own block's pass; groups of single inputs scored
            # ahead (by a pass on a larger circuit) calibrate their own scale; mixed groups neither
            ahead = [e for e in edges if e in read_ahead]
            if not ahead and rise.observe(attribution, delta):
                groups[-1]["calibrates"] = "budget"
            elif ahead and len(ahead) == len(edges) and rise_ahead.observe(sum(read_ahead[e] for e in edges), delta):
                groups[-1]["calibrates"] = "read_ahead"
        accepted = (abs(delta) if abs_delta else delta) < tau
        if on_test is not None:
            on_test(mask.clone(), candidate, current, loss, accepted)
        if accepted:
            mask[edges] = 0
            current = loss
            n_accepted += 1
            removed_stage = min(removed_stage, stage)
        if accepted or len(edges) == 1:
            scores[edges] = delta
            decided[edges] = True
            bar.update(len(edges))
            n_decided += len(edges)
            n_kept_decided += 0 if accepted else 1
        if fresh:
            name = graph.edges[edges[0]].name if len(edges) == 1 else \
                f"{len(edges)} edges: {graph.edges[edges[0]].name} .. {graph.edges[edges[-1]].name}"
            trace.append(dict(step=len(trace) + 1, edge=name, delta=delta, loss=current, kept=not accepted,
                              n_edges=int(mask.sum())))
            if checkpointer is not None and not exact.replaying:
                checkpointer.step(state)
        return accepted

    def settle(edges: list[int], stage: int) -> None:
        """Remove what can go of ``edges`` (ordered weakest first), splitting groups that hurt."""
        if not edges or not budget_left():
            return
        if test(edges, stage) or len(edges) == 1:
            return
        for part in parts_of(edges):
            settle(part, stage)

    def close_segment(loss_before: float, accepted_before: int) -> None:
        """The floor's steps for a segment that removed anything: its loss climb in steps below tau."""
        if n_accepted > accepted_before:
            climb = abs(current - loss_before) if abs_delta else current - loss_before
            stats["tests_floor_blocks"] += max(1, math.floor(climb / tau) + 1)

    carrying = carry and split == "mass" and weighted and budget > 0
    pending: list[tuple[list[int], int]] = []  # carried: earlier blocks' untested remainders and their stages

    def carried() -> list[int]:
        return [e for part, _ in pending for e in part]

    def test_with_carried(edges: list[int], stage: float = math.inf) -> bool:
        """One test of the carried remainders together with ``edges`` (counted as a carried union,
        accepted or failed); True when all of them were removed."""
        accepted = test(carried() + edges, int(min([stage] + [st for _, st in pending])))
        stats["n_carried_groups" if accepted else "n_carried_failed"] += 1
        return accepted

    def flush() -> None:
        """Settle the carried remainders: together in one test, and where that fails, each as its
        block would have (ACDC's order); then the blocks that waited on them."""
        if len(pending) > 1 and test_with_carried([]):
            pending.clear()
        else:
            parts = list(pending)
            pending.clear()
            for part, part_stage in parts:
                settle(part, part_stage)
        release()

    def settle_block(ordered: list[int], weights: torch.Tensor, stage: int) -> None:
        """Groups of the block's edges (``ordered`` weakest first), each settled before the next is
        formed: the next weakest, sized by the keep rate seen so far (``group_size``), or
        (``split=mass``) by the edges' chances of being kept (``mass_group_size``); once the loss
        budget is calibrated, packed to it (``LossRise.pack``) beside what is carried, and (``carry``)
        a group that fits is carried to the next group instead of tested; where nothing fits beside
        the carried edges, the next group joins them if the two are predicted below tau."""
        left = list(range(len(ordered)))  # positions in ``ordered`` not settled yet, weakest first
        recent: list[bool] = []  # kept (True) or removed, for each edge decided in this block
        own = set(ordered)

        def attributed(positions: list[int]) -> float:  # as the budget counts it (``LossRise.pack``)
            return float(weights[positions].clamp(min=0).sum())

        while left and budget_left():
            window = recent[-WINDOW:]
            prior = (n_kept_decided + 1) / (n_decided + 2)  # every block so far, Laplace
            rate = (sum(window) + PRIOR_WEIGHT * prior) / (len(window) + PRIOR_WEIGHT)
            packed = joined = False
            if split == "half":
                picked = left[:group_size(rate)]
            else:
                rest = weights[left] if weighted else torch.zeros(len(left), dtype=torch.float64)
                chances = keep_chances(rest, rate * len(rest))
                if rise.calibrated and not abs_delta:
                    chances = capped_chances(chances, rise.predict(rest.clamp(min=0)), tau)
                chance.update(zip([ordered[i] for i in left], chances.tolist()))
                if rise.calibrated:
                    used = attribution_sum(carried())
                    picked = [left[i] for i in rise.pack(rest.tolist(), used=used)]
                    packed = rise.holds(used + attributed(picked))
                    if pending and not packed:  # nothing fits beside the carried edges: the group that
                        # follows them joins them where the two are predicted to rise by less than tau
                        picked = [left[i] for i in rise.pack(rest.tolist())]
                        joined = rise.holds(used + attributed(picked), limit=tau)
                else:
                    picked = left[:min(mass_group_size(chances), rise.fits(rest.tolist()))]
            if pending and not (packed or joined):  # settle the carried remainders first
                flush()
                continue
            group_edges = [ordered[i] for i in picked]
            taken = set(picked)
            if carrying and not releasing and packed and sum(chance[e] for e in group_edges + carried()) <= carry_chance:
                pending.append((group_edges, stage))  # the block's next group, or the next block's, joins it
                left = [i for i in left if i not in taken]
                continue
            before, settling = decided.clone(), carried() + group_edges
            stats["n_joined_groups"] += int(joined)
            if pending and test_with_carried(group_edges, stage):
                pending.clear()
                release()  # the blocks that waited on the carried edges: they feed nothing now
            else:  # the carried remainders first (if any); when they go in one test, this group's
                flush()  # circuit is the failed union's: no forward
                settle(group_edges, stage)
            recent += [bool(mask[e]) for e in settling if e in own and decided[e] and not before[e]]
            left = [i for i in left if i not in taken]

    def block_weights(index: int, candidates: list[int]) -> torch.Tensor:
        """Attribution of a block's candidates (and, when carrying, of the single inputs of the
        visits that follow it, which no pass of their own scores)."""
        nonlocal initial
        if len(candidates) == 1:  # its weight in the units of the blocks' own passes
            if not carrying:
                return torch.zeros(1, dtype=torch.float64)
            read_ahead[candidates[0]] = weight.get(candidates[0], 0.0)
            relative = rise_ahead.scale / rise.scale if rise_ahead.scale and rise.scale else 1.0
            return torch.tensor([read_ahead[candidates[0]] * relative], dtype=torch.float64)
        if not rescore:
            if initial is None:
                initial = scored(mask, list(range(graph.n_edges)))
                weight.update(zip(range(graph.n_edges), initial.tolist()) if carrying else ())
            return initial[candidates]
        ahead: list[int] = []
        for receiver, incoming in graph_visits[index + 1:] if carrying else ():
            fresh = [e for e in incoming if not decided[e]]
            if len(fresh) > 1:
                break
            ahead += fresh
        values = scored(mask, candidates + ahead)
        weight.update(zip(ahead, values[len(candidates):].tolist()))
        return values[:len(candidates)]

    deferred: list[list[int]] = []  # blocks whose receivers feed the circuit only through carried edges
    releasing = False  # while the deferred blocks are visited: none carries then

    def waiting_edges() -> set[int]:
        """Edges not settled yet that earlier blocks' decisions wait on: the carried ones and the
        inputs of deferred blocks' receivers."""
        return set(carried()).union(*(graph_visits[index][1] for block in deferred for index in block))

    def release() -> None:
        """Visit the deferred blocks, in ACDC's order, once the carried edges are settled."""
        nonlocal releasing
        waiting, outer = list(deferred), releasing  # a visit's flush releases again, inside this one
        deferred.clear()
        releasing = True
        for block in waiting:
            visit(block)
        releasing = outer

    def visit(block: list[int]) -> None:
        """One block: drop the inputs of receivers that feed nothing, settle the others' inputs; a
        block whose receivers feed the circuit only through carried edges waits on them."""
        waiting = waiting_edges() if pending else set()
        if waiting and any(feeds_only_through(graph, mask, graph_visits[index][0], waiting) for index in block):
            deferred.append(block)
            stats["n_blocks_waited"] += 1
            return
        candidates: list[int] = []
        for index in block:
            receiver, incoming = graph_visits[index]
            if feeds_nothing(graph, mask, receiver):
                fresh = [e for e in incoming if not decided[e]]
                mask[incoming] = 0
                scores[fresh] = -math.inf
                decided[incoming] = True
                bar.update(len(fresh))
            else:
                candidates += [e for e in incoming if not decided[e]]
        if not candidates or not budget_left():
            return
        stats["n_blocks"] += 1
        stage = min(graph.edges[e].stage for e in candidates)
        weights = block_weights(block[-1], candidates)
        if len(candidates) > 1:
            order = sorted(range(len(candidates)), key=lambda i: (float(weights[i]), i))
            candidates, weights = [candidates[i] for i in order], weights[order]
        weight.update(zip(candidates, weights.tolist()))
        settle_block(candidates, weights, stage)

    graph_visits = visits(graph)
    initial: torch.Tensor | None = None
    segment_loss, segment_accepted = current, n_accepted  # the loss and steps where the current segment began
    for block in blocks(graph, group):
        if not budget_left():
            break
        visit(block)
        if not pending:  # a segment (blocks settled together through carried remainders) ends
            close_segment(segment_loss, segment_accepted)
            segment_loss, segment_accepted = current, n_accepted
        bar.set_postfix_str(f"{graph_visits[block[0]][0]} | {int(mask.sum())} edges left", refresh=False)
    if budget_left():
        flush()
    close_segment(segment_loss, segment_accepted)
    bar.close()
    stats["n_attribution_passes"] = len(attributions)
    stats["tests_floor_blocks"] += n_kept_decided

    kept = EdgeMask(graph, mask.bool())
    n, k = graph.n_edges, kept.n_kept
    bound = k + k * math.log2(n / k) if k else 0.0
    details = dict(batch_edges=exact.n_candidates, n_test_forwards=exact.n_forwards, n_accepted_groups=n_accepted,
                   tests_lower_bound=round(bound, 1), final_loss_search=current, **stats)
    return MethodResult(graph, scores, kept, parameter=tau, trace=trace, details=details,
                        tables={"groups.csv": groups})
