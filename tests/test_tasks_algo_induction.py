"""algo_4l and algo_6l, the shipped 4- and 6-layer models trained by scripts/train_algo.py: they load,
do induction (and sorting) as well as their weights files say, task=algo_induction builds on them and
ACDC runs on them; and the training loop the training scripts share is seeded and learns."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitfind.models import training
from circuitfind.models.loading import load_model
from circuitfind.models.shipped import read_shipped, shipped_weights_path
from circuitfind.runs.pipeline import run
from circuitfind.tasks import build_task

from conftest import config

ALGO_4L = dict(name="algo_4l", kind="shipped", pretrained=True)
MODELS = {"algo_4l": 1377, "algo_6l": 3217}  # name -> edges (graph=qkv)
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_algo.py"


def train_algo():
    spec = importlib.util.spec_from_file_location("train_algo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", MODELS)
def test_the_shipped_model_is_small_and_does_induction(name):
    assert shipped_weights_path(name).stat().st_size < 5e6
    shipped = read_shipped(name)
    model = load_model(dict(ALGO_4L, name=name))
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.attn_only) == (int(name[5]), 8, True)
    # measured here, on sequences the training never saw: BOS + s + s, the second copy predictable
    generator = torch.Generator().manual_seed(11)
    half = (model.cfg.n_ctx - 1) // 2
    span = torch.randint(shipped["first_token"], model.cfg.d_vocab, (64, half), generator=generator)
    tokens = torch.cat([torch.full((64, 1), shipped["bos"]), span, span], 1)
    with torch.no_grad():
        nll = F.cross_entropy(model(tokens)[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    first, repeated = nll[:, 1:half].mean().item(), nll[:, half + 1:2 * half].mean().item()
    assert first > 0.9 * math.log(model.cfg.d_vocab - shipped["first_token"])  # chance
    assert repeated < 0.2 * first
    measured = shipped["measured"]
    assert measured["loss_repeated_half"] < 0.2 * measured["loss_first_half"]
    if shipped["training"]["induction_fraction"] < 1:  # trained on sorting too
        assert measured["sort_accuracy"] > 0.8


@pytest.mark.parametrize("name", MODELS)
def test_the_shipped_model_sorts_when_trained_to(name):
    shipped = read_shipped(name)
    if shipped["training"]["induction_fraction"] == 1:
        return
    script = train_algo()
    model = load_model(dict(ALGO_4L, name=name))
    generator = torch.Generator().manual_seed(12)
    tokens, sorted_pos = script.sort_tokens(64, model.cfg.n_ctx, *shipped["training"]["sort_lengths"], generator,
                                            model.cfg.d_vocab)
    with torch.no_grad():
        predicted = model(tokens)[:, :-1].argmax(-1)
    assert (predicted == tokens[:, 1:])[sorted_pos[:, 1:]].float().mean() > 0.8


def test_sorting_sequences_sort():
    script = train_algo()
    tokens, sorted_pos = script.sort_tokens(20, 32, 3, 8, torch.Generator().manual_seed(0), 64)
    assert tokens.shape == (20, 32) and (tokens[:, 0] == script.BOS).all() and sorted_pos.any(1).all()
    for row in range(20):
        sorts = (tokens[row] == script.SORT).nonzero()[:, 0].tolist()
        seps = (tokens[row] == script.SEP).nonzero()[:, 0].tolist()
        for start, sep in zip(sorts, seps):
            x = tokens[row, start + 1:sep]
            y = tokens[row, sep + 1:sep + 1 + len(x)]
            assert torch.equal(y, x.sort().values) and len(set(x.tolist())) == len(x)
            assert sorted_pos[row, sep + 2:sep + 1 + len(x)].all() and not sorted_pos[row, sep + 1]


def test_the_algo_induction_task_builds_on_the_shipped_model():
    task = build_task("algo_induction", seed=1, model=ALGO_4L, n_prompts=6, seq_len=32, span_len=10)
    assert task.name == "algo_induction" and task.model.cfg.model_name == "algo_4l"
    assert task.validation.clean.shape == (6, 32) and task.validation.positions.shape == (6, 9)


@pytest.mark.parametrize("name", MODELS)
def test_acdc_runs_on_algo_induction(tmp_path, name):
    """A capped ACDC search through the pipeline (the whole run is the benchmark's)."""
    summary = run(config("task=algo_induction", f"model={name}", "tau=0.01", "task.n_prompts=4",
                         "method.max_edge_tests=20"), tmp_path)
    assert (summary["task"], summary["model"], summary["n_edges_total"]) == ("algo_induction", name, MODELS[name])
    assert summary["n_edge_tests"] == 20
    assert summary["metric_full"] < summary["metric_empty"]


def tiny_training(steps, done=lambda measured: False):
    arch = dict(n_layers=1, n_heads=2, d_model=16, d_head=8, n_ctx=8, d_vocab=6, attn_only=True,
                normalization_type="LN", positional_embedding_type="standard", act_fn=None)

    def next_batch(generator):  # each sequence repeats one token: predictable from position 1 on
        return torch.randint(1, 6, (16, 1), generator=generator).expand(16, 8)

    def measure(model, generator):
        tokens = next_batch(generator)
        loss = F.cross_entropy(model(tokens)[:, 1:-1].reshape(-1, 6), tokens[:, 2:].reshape(-1)).item()
        return dict(loss=loss)

    return training.train("tiny", arch, 3, steps, 1e-2, next_batch, measure, done, log_every=10)


def test_the_shared_training_loop_is_seeded_learns_and_stops_when_done():
    first, measured, steps = tiny_training(60)
    again, _, _ = tiny_training(60)
    assert steps == 60 and measured["loss"] < 0.2 * math.log(5)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters()))
    _, early, steps = tiny_training(60, done=lambda m: m["loss"] < 1.0)
    assert steps < 60 and steps % 10 == 0 and early["loss"] < 1.0


def test_warmup_then_cosine_decay():
    factor = training.warmup_cosine(100, 0.1)
    assert factor(0) == 0.1 and factor(9) > 0.97 and factor(50) < factor(20) and factor(100) == 0


def test_the_head_lasso_adds_each_heads_output_norm():
    script = train_algo()
    arch = script.architecture(2, 16, 8, 12)
    model = HookedTransformer(HookedTransformerConfig(**arch, seed=0))
    tokens = torch.randint(0, 12, (3, 8), generator=torch.Generator().manual_seed(0))
    plain = training.next_token_loss(model, tokens)
    assert torch.equal(script.head_lasso_loss(0.0)(model, tokens), plain)
    # each head's write into the residual stream, from TransformerLens' own per-head result
    model.cfg.use_attn_result = True
    _, cache = model.run_with_cache(tokens)
    norms = sum(cache[f"blocks.{layer}.attn.hook_result"].square().sum(-1).mean((0, 1)).sqrt().sum()
                for layer in range(2))
    model.cfg.use_attn_result = False
    assert script.head_lasso_loss(0.5)(model, tokens).item() == pytest.approx((plain + 0.5 * norms).item(), rel=1e-5)
    late = script.head_lasso_loss(0.5, start=1, ramp=2)  # off for one step, then half, then all of its weight
    got = [late(model, tokens).item() for _ in range(4)]
    assert got[0] == plain.item()
    assert got[1:] == pytest.approx([(plain + w * norms).item() for w in (0.25, 0.5, 0.5)], rel=1e-5)
