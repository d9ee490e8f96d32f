"""The tracr suite: program-derived canonical circuits are sufficient and (edge by edge) necessary,
and the suite's tasks give the prompts they promise.

Sufficiency and necessity are checked through the patching engine, which tests/test_engine.py holds
to the hook reference; one program is also checked through the reference itself."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from circuitfind.engine import PatchEngine, make_ablation
from circuitfind.core.graph import Architecture, EdgeMask, Graph
from circuitfind.models.tracr import load_tracr_model
from circuitfind.engine.reference import reference_ablation, reference_logits
from circuitfind.tasks import build_task
from circuitfind.tasks.tracr import proportion_canonical, reverse_canonical
from circuitfind.tasks.tracr_suite import SUITE, answers_differ
from circuitfind.tasks.tracr_circuits import connected_edges, derive_canonical, inert_edges

PROGRAMS = ("tracr_reverse", "tracr_proportion", *SUITE)
LENGTH = 4  # the suite tasks' prompt length (configs/task/tracr_*.yaml)

# Canonical edges whose removal alone changes no output on any input of length 4 (zero ablation),
# and why each is canonical all the same (README, "Program-derived circuits"):
#   tok_embed -> a<q>/<k>: the BOS default every tracr attention has (the query's constant "one"
#     direction against the key's "tokens:BOS" direction); it decides the output only where no other
#     position matches the query, which no input of these programs at this length produces;
#   a<q>, a<k> (with their tok_embed edges): heads of an always-true Select (selector width's, and
#     shuffle_dyck's "any position" aggregate), whose pattern is uniform whether or not they read.
INERT = {
    "tracr_reverse": {"a0.h0<q>", "a0.h0<k>", "tok_embed->a0.h0<q>", "tok_embed->a0.h0<k>",
                      "tok_embed->a3.h0<q>", "tok_embed->a3.h0<k>"},
    "tracr_proportion": {"tok_embed->a1.h0<q>", "tok_embed->a1.h0<k>"},
    "tracr_sort_unique": {"tok_embed->a1.h0<q>", "tok_embed->a1.h0<k>"},
    "tracr_pair_balance": {"tok_embed->a1.h0<q>", "tok_embed->a1.h0<k>", "tok_embed->a1.h1<q>",
                           "tok_embed->a1.h1<k>"},
    "tracr_shuffle_dyck": {"a0.h0<q>", "a0.h0<k>", "a4.h1<q>", "a4.h1<k>", "tok_embed->a0.h0<q>",
                           "tok_embed->a0.h0<k>", "tok_embed->a1.h0<q>", "tok_embed->a1.h0<k>",
                           "tok_embed->a1.h1<q>", "tok_embed->a1.h1<k>", "tok_embed->a4.h0<q>",
                           "tok_embed->a4.h0<k>", "tok_embed->a4.h1<q>", "tok_embed->a4.h1<k>"},
    "tracr_shuffle_dyck2": {"a0.h0<q>", "a0.h0<k>", "a6.h0<q>", "a6.h0<k>", "tok_embed->a0.h0<q>",
                            "tok_embed->a0.h0<k>", "tok_embed->a5.h0<q>", "tok_embed->a5.h0<k>",
                            "tok_embed->a6.h0<q>", "tok_embed->a6.h0<k>",
                            *(f"tok_embed->a1.h{h}<{x}>" for h in range(4) for x in "qk")},
    "tracr_frac_prevs_a": {"tok_embed->a1.h0<q>", "tok_embed->a1.h0<k>"},
}
# Every documented inert edge is one of those two kinds.
assert all(e.startswith("tok_embed->a") or e.endswith(("<q>", "<k>")) for edges in INERT.values() for e in edges)


def qkv_graph(model) -> Graph:
    return Graph(Architecture.from_config(model.cfg, split_embed=True), "qkv")


def every_row(name: str, length: int = LENGTH) -> torch.Tensor:
    tracr = load_tracr_model(name, dtype=torch.float64)
    vocab = [t for t in tracr.input_vocab if t not in (tracr.bos, tracr.pad)]
    rows = [row for row in itertools.product(vocab, repeat=length)
            if not tracr.distinct_tokens or len(set(row)) == len(row)]
    return tracr.encode(rows)


@pytest.fixture(scope="module", params=PROGRAMS)
def program(request):
    tracr = load_tracr_model(request.param, dtype=torch.float64)
    graph = qkv_graph(tracr.model)
    return request.param, tracr, graph, derive_canonical(tracr.model, graph)


def test_proportion_derived_circuit_is_the_papers():
    tracr = load_tracr_model("tracr_proportion")
    graph = qkv_graph(tracr.model)
    assert derive_canonical(tracr.model, graph) == proportion_canonical(graph)


def test_reverse_derived_circuit_adds_the_bos_reads_to_the_papers():
    tracr = load_tracr_model("tracr_reverse")
    graph = qkv_graph(tracr.model)
    derived, paper = derive_canonical(tracr.model, graph), reverse_canonical(graph)
    assert paper <= derived
    assert derived - paper == {"a0.h0<q>", "a0.h0<k>", "tok_embed->a0.h0<q>", "tok_embed->a0.h0<k>",
                               "tok_embed->a3.h0<q>", "tok_embed->a3.h0<k>"}


def test_connected_edges_match_a_direct_perturbation():
    """Independent of the product rule: an edge is connected when adding a random multiple of the
    sender's output (evaluated through the model's own hooks) changes what the receiver computes."""
    tracr = load_tracr_model("tracr_hist", dtype=torch.float64)
    model, graph = tracr.model, qkv_graph(tracr.model)
    tokens = every_row("tracr_hist")
    _, cache = model.run_with_cache(tokens)
    attn = model.blocks[0].attn
    outputs = {"tok_embed": cache["hook_embed"],
               "pos_embed": cache["hook_pos_embed"].expand_as(cache["hook_embed"]),
               "a0.h0": cache["blocks.0.attn.hook_z"][:, :, 0] @ attn.W_O[0],
               "m0": cache["blocks.0.hook_mlp_out"]}
    resid = cache["blocks.0.hook_resid_pre"]

    def reads(receiver: str, x: torch.Tensor) -> torch.Tensor:
        if receiver == "a0.h0<q>":
            return (x @ attn.W_Q[0]) @ (resid @ attn.W_K[0]).transpose(-1, -2)
        if receiver == "a0.h0<k>":
            return (resid @ attn.W_Q[0]) @ (x @ attn.W_K[0]).transpose(-1, -2)
        if receiver == "a0.h0<v>":
            return x @ attn.W_V[0] @ attn.W_O[0]
        if receiver == "m0":
            return x @ model.blocks[0].mlp.W_in
        return x @ model.W_U

    expected = set()
    for edge in graph.edges:
        if "->" in edge.name:
            base = resid if edge.receiver.startswith("a0") else cache["blocks.0.hook_resid_mid"]
            if edge.receiver == "resid_post":
                base = cache["blocks.0.hook_resid_post"]
            change = reads(edge.receiver, base + 0.37 * outputs[edge.sender]) - reads(edge.receiver, base)
            if change.abs().max() > 1e-6:
                expected.add(edge.name)
    assert connected_edges(model, graph) == expected


@pytest.mark.parametrize("corruption", ["zero", "corrupted"])
def test_canonical_circuit_is_sufficient(program, corruption):
    """Removing every edge outside the canonical circuit leaves every output unchanged."""
    name, tracr, graph, canonical = program
    clean = every_row(name)
    corrupted = clean[torch.randperm(len(clean), generator=torch.Generator().manual_seed(0))]
    engine = PatchEngine(tracr.model, graph, clean, make_ablation(corruption, tracr.model, graph, clean, corrupted))
    full = tracr.model(clean)
    circuit = engine.logits(graph.mask_from_names(canonical))
    torch.testing.assert_close(circuit, full, atol=1e-6, rtol=0)
    # ... and the circuit is not everything: removing all of it changes the outputs.
    nothing = engine.logits(EdgeMask(graph, torch.zeros(graph.n_edges, dtype=torch.bool)))
    assert (nothing - full).abs().max() > 1e-3


def test_canonical_edges_are_necessary_or_documented(program):
    """Each canonical edge removed alone (zero ablation) changes some output on some input of the
    task's length, except the documented BOS-default reads (INERT)."""
    name, tracr, graph, canonical = program
    clean = every_row(name)
    engine = PatchEngine(tracr.model, graph, clean, make_ablation("zero", tracr.model, graph, clean, clean))
    full = tracr.model(clean)[:, 1:]

    def changed(mask: EdgeMask) -> bool:
        return bool((engine.logits(mask)[:, 1:] - full).abs().max() > 1e-6)

    assert set(inert_edges(canonical, graph, changed)) == INERT.get(name, set())


def test_sufficiency_through_the_hook_reference():
    """The same sufficiency, through reference.py's hooks (no engine), on one multi-layer program."""
    tracr = load_tracr_model("tracr_sort_unique", dtype=torch.float64)
    graph = qkv_graph(tracr.model)
    clean = every_row("tracr_sort_unique")[:24]
    canonical = graph.mask_from_names(derive_canonical(tracr.model, graph))
    got = reference_logits(tracr.model, graph, clean, reference_ablation(tracr.model, clean, "zero"), canonical)
    torch.testing.assert_close(got, tracr.model(clean), atol=1e-6, rtol=0)


def test_derivation_refuses_other_graphs():
    tracr = load_tracr_model("tracr_hist")
    graph = Graph(Architecture.from_config(tracr.model.cfg, split_embed=True), "heads")
    with pytest.raises(ValueError, match="qkv graph"):
        derive_canonical(tracr.model, graph)


# ---- the suite's tasks -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SUITE)
def test_suite_task_prompts(name):
    task = build_task(name, seed=3, n_prompts=12, length=LENGTH)
    tracr = load_tracr_model(name)
    for data in (task.validation, task.test):
        assert data.clean.shape == (12, LENGTH + 1)
        assert (data.clean[:, 0] == tracr.input_vocab.index(tracr.bos)).all()
        assert data.positions.tolist() == [list(range(1, LENGTH + 1))] * 12
        # every corrupted prompt changes the program's answer
        both = torch.cat([data.clean, data.corrupted])
        assert answers_differ(tracr, both)[torch.arange(12), torch.arange(12) + 12].all()
    assert task.default_metric == ("l2" if tracr.output_vocab is None else "kl")
    again = build_task(name, seed=3, n_prompts=12, length=LENGTH)
    assert torch.equal(again.validation.clean, task.validation.clean)
    assert torch.equal(again.test.corrupted, task.test.corrupted)


def test_sort_unique_prompts_hold_distinct_tokens():
    task = build_task("tracr_sort_unique", seed=0, n_prompts=20, length=4)
    for row in task.validation.clean[:, 1:].tolist():
        assert len(set(row)) == len(row)


@pytest.mark.parametrize("params, match", [
    (dict(n_prompts=1), "n_prompts"),
    (dict(length=0), "length"),
    (dict(length=9), "at most 5"),
    (dict(ground_truth="paper"), "ground_truth=program"),
])
def test_suite_task_rejects(params, match):
    with pytest.raises(ValueError, match=match):
        build_task("tracr_hist", **params)


def test_paper_tasks_ground_truth_choice():
    paper = build_task("tracr_reverse")
    program = build_task("tracr_reverse", ground_truth="program")
    graph = qkv_graph(paper.model)
    assert paper.ground_truth_edges(graph) == reverse_canonical(graph)
    assert program.ground_truth_edges(graph) == derive_canonical(paper.model, graph)
    with pytest.raises(ValueError, match="ground_truth"):
        build_task("tracr_proportion", ground_truth="acdc")


def test_suite_figure_spec_plans_every_program_with_program_truth(tmp_path):
    from circuitfind.figures.plan import load_figure_spec, plan

    spec = load_figure_spec("tracr_suite")
    assert set(spec.tasks) == set(PROGRAMS)
    sweeps = plan(spec, "quick", ["tracr_reverse", "tracr_hist"], runs=tmp_path).sweeps
    assert len(sweeps) == 2 * 6 * 2  # task x method (all six) x corruption
    reverse = [s for s in sweeps if s.task == "tracr_reverse"]
    assert all("task.ground_truth=program" in s.overrides for s in reverse)
    assert not any("task.ground_truth=program" in s.overrides for s in sweeps if s.task == "tracr_hist")


@pytest.mark.parametrize("overrides, expected", [
    ((), 15),                                  # the paper's circuit by default
    (("task.ground_truth=program",), 21),      # the program-derived one on request
])
def test_ground_truth_reaches_the_task_through_the_config(overrides, expected):
    from circuitfind.runs.pipeline import build_problem, compose_config

    problem = build_problem(compose_config("progress=false", "task=tracr_reverse", *overrides))
    assert len(problem.task.ground_truth_edges(problem.graph)) == expected


def test_suite_task_composes_and_builds_from_its_config():
    from circuitfind.runs.pipeline import build_problem, compose_config

    problem = build_problem(compose_config("progress=false", "task=tracr_sort", "task.n_prompts=6"))
    assert problem.task.model.cfg.model_name == "tracr_sort" and problem.task.validation.clean.shape == (6, 5)
    assert problem.metric.name == "kl"


@pytest.mark.slow  # every method's sweep on one program (a few minutes); the README row it checks
def test_the_readmes_suite_row_for_token_plus_index_regenerates_as_printed(tmp_path):
    import re

    import pandas as pd

    from circuitfind.figures.build import build

    build("tracr_suite", ["tracr_token_plus_index"], out=tmp_path, echo=lambda *_: None)
    long = pd.read_csv(tmp_path / "tracr_suite_auc_long.csv")
    edge = long[long.level == "edge"]

    def cell(method):
        z, c = (float(edge[(edge.method == method) & (edge.corruption == k)].auc.iloc[0]) for k in ("zero", "corrupted"))
        return f"{z:.3f} / {c:.3f}"

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    row = re.search(r"^\| token_plus_index \| (.+) \|$", readme, re.M).group(1).split(" | ")
    assert row == [cell(m) for m in ("acdc", "sp", "hisp", "eap", "eap_ig")]
