"""model.activation_device: the engine's stored activations kept on the CPU and moved to the model's
device as they are read.  This machine has no GPU, so the move itself is a no-op here; the tests run
the CPU-storage code path (chunked reads included) and hold it to the default one, and test the
``auto`` choice from given free-memory figures."""

import dataclasses

import pytest
import torch

from circuitfind.engine import placement
from circuitfind.engine import (GPU_HEADROOM_BYTES, PatchEngine, choose_activation_device, make_ablation,
                                stored_activation_bytes)
from circuitfind.core.graph import Architecture, Graph
from circuitfind.methods import get_method

from conftest import random_problem, tiny_model
from families import family_model
from test_engine import random_masks

GiB = 2**30


def test_auto_keeps_activations_on_the_gpu_while_they_fit_with_headroom():
    free = 10 * GiB
    assert choose_activation_device("auto", "cuda:0", free - GPU_HEADROOM_BYTES, free_bytes=free) == "model"
    assert choose_activation_device("auto", "cuda:0", free - GPU_HEADROOM_BYTES + 1, free_bytes=free) == "cpu"
    assert choose_activation_device("auto", "cuda", 1, free_bytes=GPU_HEADROOM_BYTES // 2) == "cpu"
    assert choose_activation_device("auto", "cpu", 10**15) == "model"  # host memory either way
    assert choose_activation_device("cpu", "cuda:0", 1, free_bytes=free) == "cpu"
    assert choose_activation_device("model", "cuda:0", 10**15, free_bytes=free) == "model"
    assert choose_activation_device("cpu", "cpu", 1) == "cpu"  # forced: the CPU-storage path runs anyway
    with pytest.raises(ValueError, match="model.activation_device must be one of auto, model, cpu, got 'gpu'"):
        choose_activation_device("gpu", "cpu", 1)


@pytest.mark.parametrize("family", [None, "gemma2"])
def test_the_estimate_is_what_an_engine_stores(family):
    """Ablation (senders, q/k/v) + a recorded run (its senders, q/k/v, each stage's residual) + one
    run's sender buffer, counted from the tensors themselves."""
    model = tiny_model() if family is None else family_model(family)
    graph = Graph(Architecture.from_config(model.cfg))
    clean, corrupted = torch.randint(0, 40, (2, 3, 5))
    engine = PatchEngine(model, graph, clean, make_ablation("corrupted", model, graph, clean, corrupted))
    _, cache = engine.run(graph.full_mask(), record=True)
    stored = [engine.ablation.senders, engine.ablation.qkv, cache.diff, torch.stack(cache.qkv), *cache.resid,
              cache.diff]  # the last: one more run's buffer, the size of the recorded one
    assert stored_activation_bytes(graph, model.cfg, 3, 5) == sum(t.numel() * t.element_size() for t in stored)


def engines(model, corruption="corrupted", granularity="qkv"):
    """The same engine twice: stored activations on the model's device, and forced to the CPU."""
    graph = Graph(Architecture.from_config(model.cfg), granularity)
    g = torch.Generator().manual_seed(0)
    clean, corrupted = torch.randint(0, model.cfg.d_vocab, (2, 4, 6), generator=g)
    return graph, [PatchEngine(model, graph, clean, make_ablation(corruption, model, graph, clean, corrupted,
                                                                  activation_device=where),
                               activation_device=where) for where in ("model", "cpu")]


@pytest.mark.parametrize("family, corruption", [(None, "corrupted"), ("gemma2", "zero"), ("pythia", "mean")])
def test_activations_on_the_cpu_give_identical_logits_restarts_and_gradients(family, corruption):
    model = tiny_model() if family is None else family_model(family)
    graph, (on_model, on_cpu) = engines(model, corruption)
    assert on_cpu.offload and on_cpu.storage == torch.device("cpu") and not on_model.offload
    for mask in [graph.full_mask(), *random_masks(graph, 3)]:
        torch.testing.assert_close(on_cpu.logits(mask), on_model.logits(mask), rtol=0, atol=0)
    positions = torch.tensor([[4, 5]] * 4)
    caches = [e.run(graph.full_mask(), positions, record=True)[1] for e in (on_model, on_cpu)]
    assert caches[1].diff.device.type == "cpu" and caches[1].resid[0].device.type == "cpu"
    g = torch.Generator().manual_seed(1)
    for stage in (2 * graph.n_layers, 3, 2, 1):
        later = [e.index for e in graph.edges if e.stage >= stage]
        candidates = graph.full_mask().values.double().repeat(3, 1)
        candidates[:, later] = (torch.rand(3, len(later), generator=g) > 0.3).double()
        at_stage_only = candidates.clone()
        at_stage_only[:, [e.index for e in graph.edges if e.stage > stage]] = candidates[0, [
            e.index for e in graph.edges if e.stage > stage]]
        batched = [e.run(at_stage_only, positions, start_stage=stage, cache=c)[0] for e, c in zip((on_model, on_cpu), caches)]
        torch.testing.assert_close(batched[1], batched[0], rtol=0, atol=0)
    mask = torch.rand(graph.n_edges, generator=g, dtype=torch.float64)
    grads = []
    for e in (on_model, on_cpu):
        m = mask.clone().requires_grad_(True)
        e.logits(m).pow(2).sum().backward()
        grads.append(m.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)


def test_reads_split_into_several_moves_still_agree(monkeypatch):
    """With a tiny FETCH_BYTES every read moves a few slabs at a time (many moves, summed)."""
    model = family_model("gemma2")
    graph, (on_model, on_cpu) = engines(model)
    monkeypatch.setattr(placement, "FETCH_BYTES", 1)
    for mask in random_masks(graph, 3):
        torch.testing.assert_close(on_cpu.logits(mask), on_model.logits(mask), rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", [None, "gemma2"])
def test_acdc_keeps_the_same_edges_with_activations_on_the_cpu(family):
    model = tiny_model() if family is None else family_model(family)
    results = []
    for where in ("model", "cpu"):
        problem = dataclasses.replace(random_problem(model, "corrupted"), activation_device=where)
        results.append(get_method("acdc")(problem, tau=1e-3))
        assert problem.engine("validation").activation_device == where
    assert 0 < results[0].circuit.n_kept < results[0].circuit.graph.n_edges
    assert results[1].circuit.kept_names() == results[0].circuit.kept_names()
    torch.testing.assert_close(results[1].scores, results[0].scores, rtol=0, atol=0)
