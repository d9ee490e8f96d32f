"""Guided ACDC: every group decision is an exact ACDC step, checked against the slow hook reference;
attribution changes the cost, never the meaning."""


import math

import pytest
import torch
import torch.nn.functional as F

from circuitfind.core.checkpoint import Checkpointer, RunInterrupted
from circuitfind.core.graph import Architecture, EdgeMask, Graph
from circuitfind.methods import Problem, get_method
from circuitfind.methods.acdc import acdc_search, visits
from circuitfind.methods import acdc_guided
from circuitfind.methods.acdc_guided import guided_on_engine, guided_search
from circuitfind.methods.guided_blocks import blocks, feeds_only_through
from circuitfind.methods.group_sizes import LossRise, capped_chances, keep_chances, mass_group_size, mass_split
from circuitfind.core.metrics import KL
from circuitfind.engine.reference import reference_ablation, reference_logits

from conftest import tiny_model
from test_acdc import random_task
from families import FAMILIES, family_model


def tiny_problem(seed=0, granularity="qkv", corruption="corrupted", n_layers=2, n_heads=2) -> Problem:
    model = tiny_model(n_layers=n_layers, n_heads=n_heads, d_model=16, seed=seed)
    return Problem(random_task(model, seed=seed), Graph(Architecture.from_config(model.cfg), granularity),
                   corruption, KL, progress=False)


def reference_kl(problem: Problem, ablated: dict, mask: torch.Tensor) -> float:
    """KL(full model || circuit) at the task's positions, from a plain hooked forward and a plain
    unpatched one: no engine, no metric code."""
    data, model = problem.task.validation, problem.task.model
    patched = reference_logits(model, problem.graph, data.clean, ablated, EdgeMask(problem.graph, mask.double()))
    clean = model(data.clean)
    rows = torch.arange(len(data.clean))[:, None]
    logp, clean_logp = (F.log_softmax(x[rows, data.positions].double(), -1) for x in (patched, clean))
    return float((clean_logp.exp() * (clean_logp - logp)).sum(-1).mean())


def single_edge_tau(problem: Problem, quantile: float) -> float:
    effects = []
    for e in range(problem.graph.n_edges):
        mask = torch.ones(problem.graph.n_edges, dtype=torch.float64)
        mask[e] = 0
        effects.append(problem.evaluate(mask))
    return float(torch.tensor(effects).quantile(quantile))


@pytest.mark.parametrize("granularity, corruption, order, group, quantile, carry_always", [
    ("qkv", "corrupted", "eap_ig", "receiver", 0.7, False),  # the defaults
    ("qkv", "corrupted", "eap_ig", "receiver", 0.7, True),  # every remainder that fits is carried
    pytest.param("heads", "zero", "eap", "receiver", 0.7, False, marks=pytest.mark.slow),
    ("nodes", "mean", "random", "stage", 0.7, False)])  # a node's few inputs: groups of several come from a stage
def test_a_group_goes_exactly_when_the_hook_reference_says_the_loss_rose_by_less_than_tau(granularity, corruption, order,
                                                                                          group, quantile, carry_always):
    chance = math.inf if carry_always else acdc_guided.CARRY_CHANCE
    problem = tiny_problem(granularity=granularity, corruption=corruption, n_layers=3, n_heads=4 if granularity == "nodes" else 2)
    tau = single_edge_tau(problem, quantile)  # most edges removable: groups of several edges get tested
    decisions = []
    result = guided_on_engine(problem, tau=tau, order=order, group=group, on_test=lambda *args: decisions.append(args),
                              carry_chance=chance)
    if carry_always:  # a group of two receivers' edges was decided by one test
        assert result.details["n_carried_groups"] > 0
    assert not torch.isposinf(result.scores).any(), "an edge was never decided"
    ablated = reference_ablation(problem.task.model, problem.task.validation.corrupted, corruption)
    assert any(len((b != a).nonzero()) > 1 and ok for b, a, _, _, ok in decisions), "no group was removed at once"
    assert any(not ok for *_, ok in decisions)
    for before, after, _, _, accepted in decisions:
        rise = reference_kl(problem, ablated, after) - reference_kl(problem, ablated, before)
        assert abs(rise - tau) > 1e-9, "too close to tau to tell"
        assert accepted == (rise < tau)
    assert 0 < result.circuit.n_kept < problem.graph.n_edges


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_with_a_random_order_the_circuit_stays_within_its_tau_steps_of_the_full_model(seed):
    problem = tiny_problem(seed=seed)
    tau = single_edge_tau(problem, 0.3)
    result = get_method("acdc_guided")(problem, tau=tau, order="random", seed=seed)
    ablated = reference_ablation(problem.task.model, problem.task.validation.corrupted, "corrupted")
    full = reference_kl(problem, ablated, torch.ones(problem.graph.n_edges))
    circuit = reference_kl(problem, ablated, result.circuit.values.double())
    steps = result.details["n_accepted_groups"]
    assert 0 < result.circuit.n_kept < problem.graph.n_edges and steps > 0
    assert circuit - full < steps * tau
    assert result.details["final_loss_verified"] == pytest.approx(circuit, abs=1e-9)


def independent_toy(graph: Graph, seed: int):
    """A loss where each removed edge adds its own non-negative cost (edges act independently and
    never help): a few edges cost around tau = 1, most a little (many together more than tau), some
    nothing.  As in a model, an edge into a receiver that feeds nothing (no outgoing edge left)
    changes nothing."""
    generator = torch.Generator().manual_seed(seed)
    costs = torch.rand(graph.n_edges, generator=generator, dtype=torch.float64) * 0.1
    strong = torch.rand(graph.n_edges, generator=generator) < 0.15
    strong |= torch.tensor([e.receiver in ("resid_post", e.sender) for e in graph.edges])  # the output's and nodes
    costs[strong] = 2.5 * torch.rand(int(strong.sum()), generator=generator, dtype=torch.float64)
    costs[::7] = 0.0

    return additive_losses(graph, costs), costs


def additive_losses(graph: Graph, costs: torch.Tensor):
    """Losses where each removed edge adds its cost, except an edge into a receiver that feeds
    nothing (no outgoing edge left), which changes nothing, as in a model."""
    outgoing = [graph.outgoing.get(e.receiver, []) if e.receiver != "resid_post" and graph.granularity != "nodes"
                else None for e in graph.edges]

    def losses(masks, stage):
        out = []
        for m in masks:
            read = torch.tensor([edges is None or bool(m[edges].any()) for edges in outgoing], dtype=torch.float64)
            out.append(float(((1 - m.double()) * costs * read).sum()))
        return out

    return losses


@pytest.mark.parametrize("granularity", ["qkv", "heads", "nodes"])
@pytest.mark.parametrize("order", ["random", "graph", "noisy costs"])
@pytest.mark.parametrize("split, group, budget, carry", [("mass", "stage", 0.0, False), ("half", "stage", 0.0, False),
                                                         ("mass", "receiver", 0.0, False),
                                                         ("mass", "receiver", 0.75, False),
                                                         ("mass", "receiver", 0.75, True)])
def test_on_independent_edges_that_never_help_the_kept_set_is_plain_acdcs(granularity, order, split, group, budget,
                                                                          carry):
    model = tiny_model(n_layers=3, n_heads=3, d_model=12)
    graph = Graph(Architecture.from_config(model.cfg), granularity)
    for seed in range(3):
        losses, costs = independent_toy(graph, seed)
        generator = torch.Generator().manual_seed(seed)
        if order == "random":
            importance = lambda mask, edges: torch.rand(len(edges), generator=generator)  # noqa: E731
        elif order == "graph":
            importance = lambda mask, edges: -torch.tensor(edges, dtype=torch.float64)  # noqa: E731
        else:  # magnitudes like attribution's: the true costs, each off by a random factor up to 10
            importance = lambda mask, edges: costs[edges] * 10 ** (2 * torch.rand(len(edges), generator=generator,  # noqa: E731
                                                                                   dtype=torch.float64) - 1)
        plain = acdc_search(graph, losses, 1.0, progress=False, dtype=torch.float64)
        guided = guided_search(graph, losses, importance, 1.0, progress=False, dtype=torch.float64, split=split,
                               group=group, weighted=order == "noisy costs", budget=budget, carry=carry,
                               carry_chance=math.inf)  # carry: every remainder that fits, some fail
        assert 0 < plain.circuit.n_kept < graph.n_edges
        assert guided.circuit.kept_names() == plain.circuit.kept_names()
        assert not torch.isposinf(guided.scores).any(), "an edge was never decided"


def test_the_floor_by_block_is_each_blocks_climb_in_steps_below_tau_plus_the_kept_edges():
    """On additive costs a receiver's loss climb is the summed cost of the edges removed there by a
    test: the floor is K plus floor(climb / tau) + 1 for each receiver that removed one, and no run
    beats it."""
    model = tiny_model(n_layers=3, n_heads=3, d_model=12)
    graph = Graph(Architecture.from_config(model.cfg), "qkv")
    for seed in range(3):
        losses, costs = independent_toy(graph, seed)
        result = guided_search(graph, losses, lambda mask, edges: costs[edges], 1.0, progress=False,
                               dtype=torch.float64, budget=0.75)
        tested_out = torch.isfinite(result.scores) & ~result.circuit.kept  # removed by a test, not dropped
        expected = result.circuit.n_kept
        for receiver, incoming in visits(graph):
            removed = [e for e in incoming if tested_out[e]]
            if removed:
                expected += int(float(costs[removed].sum()) // 1.0) + 1
        assert result.details["tests_floor_blocks"] == expected
        assert expected <= len(result.trace)


def test_a_failed_group_splits_where_half_its_chance_of_a_kept_edge_lies():
    assert mass_split(torch.full((8,), 0.1, dtype=torch.float64)) == 4  # equal chances: halves
    assert mass_split(torch.tensor([0.01] * 9 + [0.9], dtype=torch.float64)) == 9  # the strongest alone
    assert mass_split(torch.tensor([0.5, 0.9], dtype=torch.float64)) == 1
    assert mass_split(torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64)) == 1  # no chances: halves
    assert mass_split(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)) == 2  # never an empty part
    # a group passes about half the time: chances summing to at most ln 2; the weakest alone once it
    # is kept a third of the time
    assert mass_group_size(torch.full((100,), 0.01, dtype=torch.float64)) == 69
    assert mass_group_size(torch.full((5,), 0.4, dtype=torch.float64)) == 1


def test_the_loss_budget_cuts_groups_by_their_calibrated_attribution():
    rise = LossRise(limit=0.5)
    assert rise.partition([1.0, 1.0, 1.0]) == [3]  # nothing observed yet: no limit
    rise.observe(attributed=2.0, delta=-0.3)  # a fall counts as no rise
    assert rise.fits([1.0, 1.0, 1.0]) == 3
    rise.observe(attributed=2.0, delta=1.0)  # 1.0 of rise for 4.0 of attribution: an allowance of 2.0
    assert rise.partition([1.0, 1.0, 1.0, 0.5, 3.0]) == [2, 2, 1]  # an edge over the allowance goes alone
    assert rise.fits([1.0, 1.0, 1.0]) == 2
    assert LossRise(limit=0.0).partition([5.0, 5.0]) == [2]  # budget 0: off
    rise.observe(attributed=float("inf"), delta=1.0)  # not a calibration point
    assert rise.fits([1.0, 1.0, 1.0]) == 2


def additive_costs_toy(seed: int, singles: float = 0.0):
    """(graph, losses, costs): a loss where each removed edge adds its cost: most edges up to 0.2 tau
    (several together fail), a few 2.5 tau, and every node's edge into the output 2.5 (every node
    feeds the output); ``singles``: that share of the edges costs 0.8-0.95 tau (removed, each in a
    test of its own unless something small joins it)."""
    graph = Graph(Architecture.from_config(tiny_model(n_layers=6, n_heads=8, d_model=16).cfg), "heads")
    generator = torch.Generator().manual_seed(seed)
    costs = 0.2 * torch.rand(graph.n_edges, generator=generator, dtype=torch.float64)
    big = torch.rand(graph.n_edges, generator=generator) < singles
    costs[big] = 0.8 + 0.15 * torch.rand(int(big.sum()), generator=generator, dtype=torch.float64)
    costs[torch.rand(graph.n_edges, generator=generator) < 0.01] = 2.5
    costs[torch.tensor([e.receiver == "resid_post" for e in graph.edges])] = 2.5

    def losses(masks, stage):
        return [float(((1 - m.double()) * costs).sum()) for m in masks]

    return graph, losses, costs


def test_with_exact_attribution_the_loss_budget_leaves_no_group_that_fails():
    """With attribution equal to the costs, the budget predicts every group's rise exactly: no group
    of several edges fails (without it, many do), and the kept set stays plain ACDC's."""
    graph, losses, costs = additive_costs_toy(0)

    def failed_groups(result):
        return sum(1 for row in result.trace if row["kept"] and " edges: " in row["edge"])

    plain = acdc_search(graph, losses, 1.0, progress=False, dtype=torch.float64)
    runs = {budget: guided_search(graph, losses, lambda mask, edges: costs[edges], 1.0, progress=False,
                                  dtype=torch.float64, budget=budget) for budget in (0.0, 0.75)}
    assert failed_groups(runs[0.0]) > 10
    assert failed_groups(runs[0.75]) == 0
    for result in runs.values():
        assert result.circuit.kept_names() == plain.circuit.kept_names()
    # groups.csv: a row per test, with the rise the budget predicted (here exactly the rise seen)
    rows = runs[0.75].tables["groups.csv"]
    assert [row["step"] for row in rows] == [row["step"] for row in runs[0.75].trace]
    calibrating = [row for row in rows if row["calibrates"] == "budget"]
    assert all(row["attribution"] == 0 for row in rows if row not in calibrating)  # single-input blocks
    assert math.isnan(calibrating[0]["predicted_rise"]) and len(calibrating) > 100
    assert all(row["predicted_rise"] == pytest.approx(row["delta"], rel=1e-9) for row in calibrating[1:])
    assert all(math.isnan(row["predicted_rise"]) for row in runs[0.0].tables["groups.csv"])


def test_packing_takes_the_strongest_edges_that_fit_then_fills_with_the_weakest():
    rise = LossRise(limit=0.5)
    assert rise.pack([1.0, 5.0]) == [0, 1]  # nothing observed yet: no limit
    rise.observe(attributed=4.0, delta=1.0)  # an allowance of 2.0 attribution
    assert rise.pack([0.1, 0.2, 1.0, 3.0]) == [0, 1, 2]  # 3.0 is over it; 1.0, then 0.2 and 0.1
    assert rise.pack([0.1, 0.2, 0.5, 1.0, 1.5, 3.0]) == [2, 4]  # 1.5 + 0.5 fill it exactly
    assert rise.pack([0.1, 0.3, 0.9, 0.9, 0.9]) == [0, 3, 4]  # two strong ones; 0.1 fits beside them, 0.3 not
    assert rise.pack([3.0, 4.0]) == [0]  # nothing fits: the weakest alone
    assert rise.pack([0.1, 0.2, 1.0, 3.0], used=1.5) == [0, 1]  # beside 1.5 already in the group, 0.5 is left
    assert rise.holds(2.0) and not rise.holds(2.1)
    assert rise.holds(4.0, limit=1.0) and not rise.holds(4.1, limit=1.0)  # a rise of 1.0: twice the budget's 0.5


def exact_attribution_runs(budget: float, carry: bool = False, singles: float = 0.0):
    """Guided runs on ``additive_costs_toy`` for three seeds, with attribution equal to the costs."""
    runs = []
    for seed in range(3):
        graph, losses, costs = additive_costs_toy(seed, singles)
        runs.append(guided_search(graph, losses, lambda mask, edges, costs=costs: costs[edges], 1.0, progress=False,
                                  dtype=torch.float64, budget=budget, carry=carry))
    return runs


def test_packing_groups_to_the_budget_takes_fewer_tests_than_runs_of_the_weakest(monkeypatch):
    packed = exact_attribution_runs(0.9)
    monkeypatch.setattr(LossRise, "pack", lambda self, weights, used=0.0: list(range(self.fits(weights))))
    consecutive = exact_attribution_runs(0.9)
    for a, b in zip(packed, consecutive):
        assert a.circuit.kept_names() == b.circuit.kept_names()
        assert a.details["tests_floor_blocks"] <= len(a.trace) < len(b.trace)


def test_carrying_block_remainders_saves_tests_and_keeps_the_same_edges():
    """With attribution equal to the costs, a block's last group waits for the next block's first:
    the same kept set as without carrying, in fewer tests, never fewer than the floor of the blocks
    as settled together."""
    carried, alone = (exact_attribution_runs(0.75, carry) for carry in (True, False))
    for a, b in zip(carried, alone):
        assert a.circuit.kept_names() == b.circuit.kept_names()
        assert a.details["n_carried_groups"] > 0 and b.details["n_carried_groups"] == 0
        assert a.details["tests_floor_blocks"] <= len(a.trace) < len(b.trace)


def test_the_group_after_carried_edges_joins_them_where_the_two_are_predicted_below_tau(monkeypatch):
    """Edges of 0.8-0.95 tau fit no group beside a small carried remainder; with attribution equal to
    the costs, such an edge joins the remainder's test where the two are predicted below tau, and
    passes: the same kept set in fewer tests than testing the remainder first."""
    joined = exact_attribution_runs(0.75, carry=True, singles=0.05)
    holds = LossRise.holds
    monkeypatch.setattr(LossRise, "holds", lambda self, attributed, limit=None: limit is None and holds(self, attributed))
    apart = exact_attribution_runs(0.75, carry=True, singles=0.05)
    for a, b in zip(joined, apart):
        assert a.circuit.kept_names() == b.circuit.kept_names()
        assert a.details["n_joined_groups"] > 0 and b.details["n_joined_groups"] == 0
        assert a.details["tests_floor_blocks"] <= len(a.trace) < len(b.trace)


def layer0_toys(layer0_costs) -> list:
    """(graph, costs, layer 0's inputs) for three seeds: additive costs over a heads graph whose 16
    layer-0 heads are single-input blocks (scored ahead by ``m0``'s pass): most edges up to 0.2 tau,
    every edge into the output 2.5, layer 0's inputs ``layer0_costs(count, generator)``."""
    graph = Graph(Architecture.from_config(tiny_model(n_layers=2, n_heads=16, d_model=16).cfg), "heads")
    single = torch.tensor([e.receiver.startswith("a0.") for e in graph.edges])
    toys = []
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        costs = 0.2 * torch.rand(graph.n_edges, generator=generator, dtype=torch.float64)
        costs[single] = layer0_costs(int(single.sum()), generator)
        costs[torch.tensor([e.receiver == "resid_post" for e in graph.edges])] = 2.5
        toys.append((graph, costs, single))
    return toys


def read_ahead_toy_runs(bias: float) -> list:
    """Guided runs on ``layer0_toys`` whose layer-0 inputs cost 0.3-0.5 tau each, with attribution
    equal to the costs except theirs, ``bias`` times their costs; edges into receivers that feed
    nothing cost nothing."""
    runs = []
    for graph, costs, single in layer0_toys(lambda n, g: 0.3 + 0.2 * torch.rand(n, generator=g, dtype=torch.float64)):
        attribution = torch.where(single, bias * costs, costs)
        runs.append(guided_search(graph, additive_losses(graph, costs), lambda mask, edges, a=attribution: a[edges],
                                  1.0, progress=False, dtype=torch.float64, budget=0.75, carry=True,
                                  carry_chance=math.inf))
    return runs


def test_read_ahead_scores_are_calibrated_on_their_own_tests(monkeypatch):
    """Single-input blocks scored ahead, on another circuit, with attribution twice their costs:
    calibrated apart, they go in about as few tests as with exact attribution; calibrated with the
    blocks' own passes, their pairs look too large to share a test."""
    exact, apart = read_ahead_toy_runs(1.0), read_ahead_toy_runs(2.0)
    monkeypatch.setattr(LossRise, "scale", property(lambda self: None))  # one calibration for all
    pooled = read_ahead_toy_runs(2.0)
    for e, a, p in zip(exact, apart, pooled):
        assert e.circuit.kept_names() == a.circuit.kept_names() == p.circuit.kept_names()
        assert len(a.trace) <= len(e.trace) + 1 < len(p.trace)


def test_edges_predicted_harmless_are_carried_however_many_edges_around_them_are_kept(monkeypatch):
    """Where half the edges nearby are kept, the keep rate gives every edge a high chance of being
    kept; capped by its predicted rise over tau (Markov), an input predicted harmless (attribution
    equal to the costs) is carried to the next block instead of tested alone: fewer tests, the same
    kept set (plain ACDC's)."""
    toys = [(graph, additive_losses(graph, costs), costs) for graph, costs, _ in layer0_toys(  # about half kept
        lambda n, g: torch.where(torch.rand(n, generator=g) < 0.5, 0.0, 2.5).double())]

    def runs():
        return [guided_search(graph, losses, lambda mask, edges, a=costs: a[edges], 1.0, progress=False,
                              dtype=torch.float64, budget=0.75, carry=True) for graph, losses, costs in toys]

    capped = runs()
    monkeypatch.setattr(acdc_guided, "capped_chances", lambda chances, rises, tau: chances)
    uncapped = runs()
    for a, b in zip(capped, uncapped):
        assert a.circuit.kept_names() == b.circuit.kept_names()
        assert len(a.trace) <= len(b.trace)
    assert sum(len(a.trace) for a in capped) < sum(len(b.trace) for b in uncapped)
    graph, losses, _ = toys[0]
    plain = acdc_search(graph, losses, 1.0, progress=False, dtype=torch.float64)
    assert capped[0].circuit.kept_names() == plain.circuit.kept_names()


def test_capped_chances_are_at_most_the_predicted_rise_over_tau():
    chances = torch.tensor([0.5, 0.5, 0.5, 0.01], dtype=torch.float64)
    rises = torch.tensor([0.0, 0.2, 2.0, 0.5], dtype=torch.float64) * 1e-3
    assert capped_chances(chances, rises, 1e-3).tolist() == pytest.approx([0.0, 0.2, 0.5, 0.01])
    assert capped_chances(chances, -rises, 1e-3).tolist() == [0.0] * 4  # a negative rise keeps nothing


def test_a_carried_remainder_whose_test_fails_is_settled_as_its_own_block_would_be():
    """Attribution blind to half the edges (scored 0) hides edges of 2.5 tau in carried
    remainders: their unions fail, and the remainders are settled again, so the kept set is still
    plain ACDC's on additive costs, and every edge is decided."""
    for seed in range(3):
        graph, losses, costs = additive_costs_toy(seed)
        attribution = costs.clone()
        attribution[torch.rand(graph.n_edges, generator=torch.Generator().manual_seed(seed)) < 0.5] = 0.0
        plain = acdc_search(graph, losses, 1.0, progress=False, dtype=torch.float64)
        guided = guided_search(graph, losses, lambda mask, edges: attribution[edges], 1.0, progress=False,
                               dtype=torch.float64, budget=0.75, carry=True, carry_chance=math.inf)
        assert guided.details["n_carried_failed"] > 0 and guided.details["n_carried_groups"] > 0
        assert guided.circuit.kept_names() == plain.circuit.kept_names()
        assert not torch.isposinf(guided.scores).any(), "an edge was never decided"


def test_keep_chances_follow_attribution_half_way_and_never_exceed_one():
    chances = keep_chances(torch.tensor([0.0, 0.0, 1.0, 3.0], dtype=torch.float64), expected_kept=2.0)
    assert chances.tolist() == pytest.approx([0.25, 0.25, 0.5, 1.0])  # 2 x (half evenly + half by weight), capped
    even = keep_chances(torch.tensor([-1.0, 2.0], dtype=torch.float64), expected_kept=1.0)  # not magnitudes
    assert even.tolist() == [0.5, 0.5]


def test_blocks_cut_acdcs_visits_where_the_stage_changes_or_a_receiver_feeds_the_block():
    model = tiny_model(n_layers=2, n_heads=2, d_model=16)
    graph = Graph(Architecture.from_config(model.cfg))
    cut = [[visits(graph)[i][0] for i in block] for block in blocks(graph, "stage")]
    assert cut[0] == ["resid_post"]
    assert cut[1] == ["m1"]
    assert cut[2] == ["a1.h1", "a1.h0"] * 3  # the q/k/v edges of layer 1's heads
    assert cut[3] == [f"a1.h{h}<{w}>" for w in "vkq" for h in (1, 0)]  # their inputs
    assert sum(len(b) for b in cut) == len(visits(graph))
    assert all(len(b) == 1 for b in blocks(graph, "receiver"))


def test_a_block_whose_receivers_feed_only_through_carried_edges_waits_for_them():
    """The last MLP's inputs are cheap and carried; the last layer's heads then feed the circuit only
    through them.  ACDC removes the carried edges first and drops the heads' inputs untested (score
    -inf); visited before the carried edges are settled, the heads' inputs would be tested."""
    model = tiny_model(n_layers=2, n_heads=2, d_model=16)
    graph = Graph(Architecture.from_config(model.cfg))
    losses, costs = independent_toy(graph, 0)
    last = f"m{graph.n_layers - 1}"
    for e in graph.edges:
        costs[e.index] = 0.01 if e.receiver in ("resid_post", last) else 2.0
    costs[next(e.index for e in graph.edges if e.name == f"{last}->resid_post")] = 5.0
    importance = lambda mask, edges: costs[edges]  # noqa: E731
    plain = acdc_search(graph, losses, 1.0, progress=False, dtype=torch.float64)
    guided = guided_search(graph, losses, importance, 1.0, progress=False, dtype=torch.float64, budget=0.75,
                           carry=True, carry_chance=math.inf)
    assert plain.circuit.kept_names() == [f"{last}->resid_post"]
    assert guided.details["n_blocks_waited"] > 0
    assert guided.circuit.kept_names() == plain.circuit.kept_names()
    assert torch.equal(torch.isneginf(guided.scores), torch.isneginf(plain.scores))  # the same edges untested


def test_a_receiver_waits_on_carried_edges_only_when_it_feeds_the_circuit_through_them_alone():
    model = tiny_model(n_layers=2, n_heads=2, d_model=16)
    graph = Graph(Architecture.from_config(model.cfg))
    out = graph.outgoing["m0"]  # m0 feeds layer 1's head inputs, m1 and the output
    to_output = next(e for e in out if graph.edges[e].receiver == "resid_post")
    to_m1 = next(e for e in out if graph.edges[e].receiver == "m1")
    mask = torch.ones(graph.n_edges)
    assert not feeds_only_through(graph, mask, "m0", {to_m1})  # it feeds the output either way
    assert feeds_only_through(graph, mask, "m0", set(out))
    mask[[e for e in out if e != to_m1]] = 0
    assert feeds_only_through(graph, mask, "m0", {to_m1})
    assert not feeds_only_through(graph, mask, "m0", {to_output})
    mask[to_m1] = 0  # it feeds nothing, whatever the carried edges
    assert not feeds_only_through(graph, mask, "m0", set(out))
    assert not feeds_only_through(graph, torch.ones(graph.n_edges), "resid_post", set(out))


@pytest.mark.parametrize("batch_edges, carry_always", [pytest.param(2, False, marks=pytest.mark.slow), (16, False),
                                                       (16, True)])  # unions and waits across stages
def test_batched_candidates_take_exactly_the_sequential_decisions(batch_edges, carry_always):
    chance = math.inf if carry_always else acdc_guided.CARRY_CHANCE
    problem = tiny_problem(seed=1)
    tau = single_edge_tau(problem, 0.5)
    sequential = get_method("acdc_guided")(problem, tau=tau, batch_edges=1, carry_chance=chance)
    batched = get_method("acdc_guided")(problem, tau=tau, batch_edges=batch_edges, carry_chance=chance)
    assert batched.circuit.kept_names() == sequential.circuit.kept_names()
    assert [(r["edge"], r["kept"]) for r in batched.trace] == [(r["edge"], r["kept"]) for r in sequential.trace]
    assert batched.details["n_test_forwards"] < sequential.details["n_test_forwards"] == len(sequential.trace)


@pytest.mark.parametrize("compare", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_batched_unions_across_stages_run_their_groups_one_circuit_at_a_time(compare):
    """shuffle_dyck2 under corrupted ablation carries remainders into groups read at another stage:
    such a group's candidates do not share a restart, so it is not batched (a batch across stages is
    an engine error); slow: the same trace as one candidate per forward."""
    from test_acdc import tracr_problem
    problem = tracr_problem("tracr_shuffle_dyck2", corruption="corrupted")
    batched = get_method("acdc_guided")(problem, tau=0.1, batch_edges=16, carry_chance=math.inf)
    assert batched.details["n_carried_groups"] + batched.details["n_carried_failed"] > 0
    assert batched.details["n_test_forwards"] < len(batched.trace)  # other groups still batched
    if compare:
        sequential = get_method("acdc_guided")(problem, tau=0.1, batch_edges=1, carry_chance=math.inf)
        assert [(r["edge"], r["kept"]) for r in batched.trace] == [(r["edge"], r["kept"]) for r in sequential.trace]


def test_an_interrupted_run_resumes_to_the_same_circuit(tmp_path):
    problem = tiny_problem(seed=2)
    tau = single_edge_tau(problem, 0.5)
    whole = get_method("acdc_guided")(problem, tau=tau)
    checkpointer = Checkpointer(tmp_path, "h", every_steps=1)
    checkpointer.stop_signal = "SIGTERM"  # stop after the first exact test
    with pytest.raises(RunInterrupted):
        get_method("acdc_guided")(problem, tau=tau, checkpointer=checkpointer)
    resumed = get_method("acdc_guided")(problem, tau=tau, checkpointer=Checkpointer(tmp_path, "h"))
    assert resumed.circuit.kept_names() == whole.circuit.kept_names()
    assert resumed.trace == whole.trace
    assert torch.equal(resumed.scores, whole.scores)


def test_max_edge_tests_stops_the_search_and_keeps_what_is_untested():
    problem = tiny_problem()
    result = get_method("acdc_guided")(problem, tau=single_edge_tau(problem, 0.5), max_edge_tests=3)
    assert len(result.trace) == 3
    assert bool(torch.isposinf(result.scores).any())
    assert bool(result.circuit.kept[torch.isposinf(result.scores)].all())


@pytest.mark.parametrize("bad, message", [(dict(order="best"), "unknown order"), (dict(group="layer"), "unknown group"),
                                          (dict(rescore="yes"), "rescore must be"), (dict(tau=0), "tau must be"),
                                          (dict(ig_steps=0), "ig_steps must be"), (dict(budget=1.5), "budget must be"),
                                          (dict(budget=True), "budget must be"), (dict(carry="no"), "carry must be"),
                                          (dict(carry_chance=-0.1), "carry_chance must be")])
def test_bad_settings_are_one_line_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        get_method("acdc_guided")(tiny_problem(), **{"tau": 0.01, **bad})


@pytest.mark.parametrize("family", [
    "llama", *(pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES if f != "llama")])
def test_every_model_family_takes_the_decisions_the_hook_reference_takes(family):
    model = family_model(family, n_layers=2, n_heads=6 if family == "rmspre-parallel" else 4)
    problem = Problem(random_task(model), Graph(Architecture.from_config(model.cfg), "qkv"), "corrupted", KL,
                      progress=False)
    tau = single_edge_tau(problem, 0.7)
    decisions = []
    result = guided_on_engine(problem, tau=tau, on_test=lambda *args: decisions.append(args))
    ablated = reference_ablation(model, problem.task.validation.corrupted, "corrupted")
    known = {}

    def kl(mask):  # each circuit once
        key = tuple(mask.bool().tolist())
        if key not in known:
            known[key] = reference_kl(problem, ablated, mask)
        return known[key]

    assert any(not ok for *_, ok in decisions) and any(ok for *_, ok in decisions)
    for before, after, _, _, accepted in decisions:
        rise = kl(after) - kl(before)
        assert abs(rise - tau) > 1e-9 and accepted == (rise < tau)
    assert "warning" not in result.details
