"""Shared fixtures: tiny HookedTransformers built from a config, never from the hub."""

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)

import pytest  # noqa: E402
import torch  # noqa: E402


def tiny_model(n_layers=2, n_heads=3, d_model=24, attn_only=False, normalization_type="LN",
               attention_dir="causal", dtype=torch.float64, seed=0, d_vocab=40,
               positional_embedding_type="standard"):
    """A random model with random biases and layer-norm weights too (TransformerLens initialises
    them to 0 and 1, which would hide mistakes in how the engine handles them)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig  # TransformerLens 3 only

    cfg = HookedTransformerConfig(
        n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_head=d_model // n_heads,
        d_mlp=None if attn_only else 2 * d_model, attn_only=attn_only, d_vocab=d_vocab, n_ctx=16,
        act_fn="gelu", normalization_type=normalization_type, attention_dir=attention_dir,
        dtype=dtype, seed=seed, positional_embedding_type=positional_embedding_type,
    )
    model = HookedTransformer(cfg)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith((".b_Q", ".b_K", ".b_V", ".b_O", ".b_in", ".b_out", ".b", "b_U")):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
            elif name.endswith(".w"):
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return model.eval().requires_grad_(False)


@pytest.fixture
def make_tiny_model():
    return tiny_model


def answer_gap(logits, clean_logits, data=None):
    """A task metric with a non-zero gradient at the unpatched model (like IOI's logit difference):
    the logit of token 3 minus that of token 5, per prompt."""
    return (logits[..., 3] - logits[..., 5]).mean(-1)


def random_problem(model, corruption, granularity="qkv", metric=None, batch=4, seq=6, seed=0):
    """A Problem on random clean and corrupted tokens, its metric read at the last two positions."""
    from circuitfind.core.graph import Architecture, Graph
    from circuitfind.methods import Problem
    from circuitfind.core.metrics import KL
    from circuitfind.tasks import TaskData
    from circuitfind.tasks.base import Task

    metric = metric or KL
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, model.cfg.d_vocab, (batch, seq), generator=g)
    corrupted = torch.randint(0, model.cfg.d_vocab, (batch, seq), generator=g)
    data = TaskData(clean, corrupted, torch.tensor([[seq - 2, seq - 1]] * batch))
    task = Task("random", model, data, data, {metric.name: metric}, metric.name)
    return Problem(task, Graph(Architecture.from_config(model.cfg), granularity), corruption, metric, progress=False)


def config(*overrides):
    """The config ``circuitfind <overrides>`` runs, without progress bars."""
    from circuitfind.runs.pipeline import compose_config

    return compose_config("progress=false", *overrides)


# ---- tests that need GPT-2's BPE --------------------------------------------------------------
# GPT-2's tokenizer is not part of the project: `make test` and CI find it in ../shared (through
# $CIRCUITFIND_GPT2_TOKENIZER), a fresh clone may have no such folder.  Tests marked
# `needs_gpt2_tokenizer` then skip with one reason; CI sets CIRCUITFIND_REQUIRE_GPT2_TOKENIZER=1 so
# that they fail there instead of skipping.
GPT2_TOKENIZER_REASON = ("needs GPT-2's BPE tokenizer: set CIRCUITFIND_GPT2_TOKENIZER to a folder holding its "
                         "vocab.json and merges.txt (make test uses ../shared/gpt2-tokenizer)")
_gpt2_tokenizer_found: list[bool] = []


def gpt2_tokenizer_found() -> bool:
    if not _gpt2_tokenizer_found:
        from circuitfind.models.loading import ModelUnavailableError, gpt2_tokenizer

        try:
            gpt2_tokenizer()
            _gpt2_tokenizer_found.append(True)
        except ModelUnavailableError:
            _gpt2_tokenizer_found.append(False)
    return _gpt2_tokenizer_found[0]


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_gpt2_tokenizer: skips (one reason) where GPT-2's BPE cannot be found")


def require_gpt2_tokenizer() -> None:
    """Skip the calling test (fail it under CIRCUITFIND_REQUIRE_GPT2_TOKENIZER=1) without GPT-2's BPE."""
    if not gpt2_tokenizer_found():
        if os.environ.get("CIRCUITFIND_REQUIRE_GPT2_TOKENIZER") == "1":
            pytest.fail(f"CIRCUITFIND_REQUIRE_GPT2_TOKENIZER=1, but this test {GPT2_TOKENIZER_REASON}")
        pytest.skip(GPT2_TOKENIZER_REASON)


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_gpt2_tokenizer"):
        require_gpt2_tokenizer()
