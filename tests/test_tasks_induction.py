"""Induction: repeated-span data, the shipped induction_2l model (which must show induction), and ACDC
on it through the pipeline, offline."""

import math

import pytest
import torch
import torch.nn.functional as F

from circuitfind.models.loading import load_model
from circuitfind.models.shipped import read_shipped
from circuitfind.runs.pipeline import run
from circuitfind.tasks import build_task
from circuitfind.tasks.induction import METRICS, repeated_span_tokens

from conftest import config

INDUCTION_2L = dict(name="induction_2l", kind="shipped", pretrained=True)


def test_repeated_spans_repeat_and_fit():
    generator = torch.Generator().manual_seed(0)
    span_lens = torch.randint(2, 16, (200,), generator=generator)
    tokens, second = repeated_span_tokens(200, 32, span_lens, torch.arange(5, 50), bos=1, generator=generator)
    assert tokens.shape == (200, 32) and (tokens[:, 0] == 1).all() and (tokens[:, 1:] >= 5).all()
    for row, (span, start) in enumerate(zip(span_lens.tolist(), second.tolist())):
        assert start + span <= 32
        copy = tokens[row, start:start + span]
        # the same span occurs earlier, ending at or before the second copy starts
        earlier = [p for p in range(1, start - span + 1) if torch.equal(tokens[row, p:p + span], copy)]
        assert earlier
    assert len(set(second.tolist())) > 10  # the places vary


def test_spans_that_cannot_repeat_are_refused():
    with pytest.raises(ValueError, match="do not repeat within sequences of 20 tokens"):
        repeated_span_tokens(2, 20, torch.tensor([10, 10]), torch.arange(5), 0, torch.Generator())


def test_induction_task_reads_the_predictable_positions():
    task = build_task("induction", seed=3, model=INDUCTION_2L, n_prompts=20, seq_len=40, span_len=8)
    data = task.validation
    assert data.clean.shape == data.corrupted.shape == (20, 40)
    assert data.positions.shape == (20, 7)
    assert (data.extras["labels"] == data.clean.gather(1, data.positions + 1)).all()
    # each label is the token that followed the current token at its first occurrence
    for row in range(20):
        for k, p in enumerate(data.positions[row].tolist()):
            earlier = [q for q in range(1, p - 7) if data.clean[row, q] == data.clean[row, p]]
            assert any(data.clean[row, q + 1] == data.extras["labels"][row, k] for q in earlier)
    assert not (data.corrupted == data.clean).all(1).any()  # every row corrupted by another row
    assert not torch.equal(task.validation.clean, task.test.clean)
    again = build_task("induction", seed=3, model=INDUCTION_2L, n_prompts=20, seq_len=40, span_len=8)
    assert torch.equal(again.validation.clean, data.clean) and torch.equal(again.test.corrupted, task.test.corrupted)
    assert task.ground_truth_edges is None


def test_the_shipped_model_does_induction():
    shipped = read_shipped("induction_2l")
    model = load_model(INDUCTION_2L)
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.attn_only) == (2, 8, True)
    assert model.cfg.positional_embedding_type == "standard"
    # BOS + s + s: the repeated half is predictable, the first is not
    generator = torch.Generator().manual_seed(7)
    half = 30
    span = torch.randint(shipped["first_token"], model.cfg.d_vocab, (64, half), generator=generator)
    tokens = torch.cat([torch.full((64, 1), shipped["bos"]), span, span], 1)
    with torch.no_grad():
        nll = F.cross_entropy(model(tokens)[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    first, repeated = nll[:, 1:half].mean().item(), nll[:, half + 1:2 * half].mean().item()
    assert first > 0.9 * math.log(model.cfg.d_vocab - 1)  # chance
    assert repeated < 0.1 * first
    assert shipped["measured"]["loss_repeated_half"] < 0.1 * shipped["measured"]["loss_first_half"]


def test_induction_nll_metric():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))
    data = type("Data", (), {"extras": {"labels": torch.tensor([[0, 1]])}})()
    got = METRICS["nll"].per_prompt(logits, logits, data)
    assert got.item() == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 2)


def test_acdc_on_induction_runs_a_capped_search_on_the_trained_model(tmp_path):
    """The quick twin of the whole run below: the same task and model, 30 edge tests on 4 prompts."""
    summary = run(config("task=induction", "tau=0.01", "task.n_prompts=4", "task.seq_len=24", "task.span_len=6",
                         "method.max_edge_tests=30"), tmp_path)
    assert (summary["task"], summary["model"], summary["n_edges_total"]) == ("induction", "induction_2l", 305)
    assert summary["n_edge_tests"] == 30 and (tmp_path / "trace.csv").is_file()
    assert summary["metric_full"] < summary["metric_empty"]


@pytest.mark.slow  # a whole ACDC run (about a minute on 2 cores)
def test_acdc_on_induction_runs_offline_on_the_trained_model(tmp_path):
    summary = run(config("task=induction", "tau=0.01", "task.n_prompts=10", "task.seq_len=32", "task.span_len=8"),
                  tmp_path)
    assert (summary["task"], summary["model"], summary["n_edges_total"]) == ("induction", "induction_2l", 305)
    assert 0 < summary["n_edges_kept"] < 305
    assert summary["metric_circuit"] < 0.5 * summary["metric_empty"]  # the circuit keeps much of the behaviour
    assert summary["edge_tpr"] is None  # no canonical circuit
    assert (tmp_path / "trace.csv").is_file()


@pytest.mark.needs_gpt2_tokenizer
def test_the_papers_shortformer_induction_model_runs_with_random_weights(tmp_path):
    summary = run(config("task=induction", "model=redwood_attn_2l", "model.pretrained=false", "task.n_prompts=4",
                         "task.seq_len=24", "task.span_len=6", "tau=0.01", "method.max_edge_tests=40"), tmp_path)
    assert summary["model"].startswith("redwood_attn_2l") and summary["n_edges_total"] == 305
    assert 0 < summary["n_edges_kept"] < 305
