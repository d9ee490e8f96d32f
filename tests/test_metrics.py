"""KL against torch's own KL divergence, and its cache of the clean terms."""

import pytest
import torch
import torch.nn.functional as F

from circuitfind.core import metrics
from circuitfind.core.metrics import kl_divergence


def reference_kl(logits, clean_logits):
    """KL(clean || patched) per prompt: torch's kl_div summed over the vocabulary, mean over positions."""
    per_position = F.kl_div(F.log_softmax(logits.double(), -1), F.log_softmax(clean_logits.double(), -1),
                            reduction="none", log_target=True).sum(-1)
    return per_position.mean(-1)


def test_kl_matches_torch_for_every_circuit_against_the_same_clean_logits():
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(5, 3, 50, generator=g)
    for _ in range(3):  # the second and third calls read the clean terms computed by the first
        patched = torch.randn(5, 3, 50, generator=g)
        torch.testing.assert_close(kl_divergence(patched, clean).double(), reference_kl(patched, clean),
                                   rtol=1e-6, atol=1e-6)
    assert float(kl_divergence(clean, clean).abs().max()) < 1e-6


def test_kl_follows_clean_logits_changed_in_place_or_replaced():
    g = torch.Generator().manual_seed(1)
    clean, patched = torch.randn(4, 2, 30, generator=g), torch.randn(4, 2, 30, generator=g)
    kl_divergence(patched, clean)
    clean.mul_(3)  # same tensor, new values
    torch.testing.assert_close(kl_divergence(patched, clean).double(), reference_kl(patched, clean), rtol=1e-6, atol=1e-6)
    other = torch.randn(4, 2, 30, generator=g)
    torch.testing.assert_close(kl_divergence(patched, other).double(), reference_kl(patched, other), rtol=1e-6, atol=1e-6)


def test_kl_gradient_flows_to_the_patched_logits_with_cached_clean_terms():
    g = torch.Generator().manual_seed(2)
    clean = torch.randn(3, 1, 20, dtype=torch.float64, generator=g)
    kl_divergence(clean + 1, clean)  # fills the cache
    patched = torch.randn(3, 1, 20, dtype=torch.float64, generator=g, requires_grad=True)
    (grad,) = torch.autograd.grad(kl_divergence(patched, clean).sum(), patched)
    (expected,) = torch.autograd.grad(reference_kl(patched, clean).sum(), patched)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("chunk", [10 ** 9, 2 * 5000, 4 * 5000])  # one chunk; 3 chunks; 2 and a tail
def test_kl_without_gradients_is_the_log_softmax_sum_to_float64_rounding(chunk, monkeypatch):
    """The gradient-free sum (log sum p exp(d) - sum p d, in chunks of positions) against the
    log_softmax one, on a large vocabulary, for logits far from and very near the clean ones (a KL
    of 1e-10: both agree to 1e-14, a few roundings of terms of size 10); exactly 0 at the clean
    logits."""
    monkeypatch.setattr(metrics, "KL_CHUNK_VALUES", chunk)
    monkeypatch.setattr(metrics, "KL_CHUNKED_FROM", 0)
    g = torch.Generator().manual_seed(3)
    clean = 4 * torch.randn(3, 2, 5000, dtype=torch.float64, generator=g)
    for patched in (4 * torch.randn(3, 2, 5000, dtype=torch.float64, generator=g),
                    clean + 1e-5 * torch.randn(3, 2, 5000, dtype=torch.float64, generator=g)):
        fast = kl_divergence(patched, clean)
        slow = kl_divergence(patched.clone().requires_grad_(True), clean).detach()
        torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-14)
        torch.testing.assert_close(fast, reference_kl(patched, clean), rtol=1e-9, atol=1e-14)
    assert 0 < float(fast.min()) < 1e-8
    assert bool((kl_divergence(clean.clone(), clean) == 0).all())


@pytest.mark.parametrize("chunked_from", [0, 10 ** 9])
def test_kl_of_several_candidates_against_one_clean_set(chunked_from, monkeypatch):
    """Logits [candidates, batch, positions, vocab] against clean [batch, positions, vocab]: each
    candidate's KL is its own."""
    monkeypatch.setattr(metrics, "KL_CHUNKED_FROM", chunked_from)
    g = torch.Generator().manual_seed(4)
    clean = torch.randn(3, 2, 40, dtype=torch.float64, generator=g)
    patched = torch.randn(4, 3, 2, 40, dtype=torch.float64, generator=g)
    together = kl_divergence(patched, clean)
    assert together.shape == (4, 3)
    for i in range(4):
        torch.testing.assert_close(together[i], reference_kl(patched[i], clean), rtol=1e-9, atol=1e-14)
