"""Model loading: random-weight stand-ins offline, real weights from a (fake) Hugging Face cache with
TransformerLens' processing, and a fast one-line failure where weights cannot be had."""

import json
import socket
import time

import huggingface_hub.constants
import pytest
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens import loading_from_pretrained as tl_loading

from circuitfind.engine import UnsupportedModelError
from circuitfind.core.graph import Architecture, Graph
from circuitfind.models import loading
from circuitfind.models.loading import HUB_ARCHITECTURES, ModelUnavailableError, load_model

HUB_MODELS = {
    "gpt2": dict(name="gpt2", kind="hub", repo="gpt2", fold_ln=True, center_writing_weights=True,
                 center_unembed=True),
    "attn_only_4l": dict(name="attn_only_4l", kind="hub", repo="NeelNanda/Attn_Only_4L512W_C4_Code",
                         fold_ln=True, center_writing_weights=True, center_unembed=True),
    "redwood_attn_2l": dict(name="redwood_attn_2l", kind="hub", repo="ArthurConmy/redwood_attn_2l",
                            fold_ln=False, center_writing_weights=False, center_unembed=False),
}
# GPT-2 small's config.json on the hub (the fields TransformerLens reads).
GPT2_CONFIG_JSON = dict(
    activation_function="gelu_new", architectures=["GPT2LMHeadModel"], layer_norm_epsilon=1e-5, model_type="gpt2",
    n_ctx=1024, n_embd=768, n_head=12, n_layer=12, n_positions=1024, vocab_size=50257,
    bos_token_id=50256, eos_token_id=50256, initializer_range=0.02,
)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a test that must stay offline tried to open a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache that the loader (which reads the location at call time) uses."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "hub").mkdir()
    return tmp_path / "hub"


def cache_repo(cache, repo: str, files: dict[str, object]) -> None:
    """Lay ``files`` out as the cached snapshot of ``repo``'s main branch (dict/str: json/text,
    a torch object: torch.save, a folder: its files)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, dict) and name.endswith(".json"):
            (snapshot / name).write_text(json.dumps(content))
        else:
            torch.save(content, snapshot / name)


def model_cfg(name, **overrides):
    return dict(HUB_MODELS[name], **overrides)


@pytest.mark.parametrize("name, n_edges, normalization", [
    ("gpt2", 32_923, "LNPre"), ("attn_only_4l", 1_377, "LNPre"), ("redwood_attn_2l", 305, "LN")])
def test_random_weights_build_the_papers_architectures_offline(name, n_edges, normalization, no_network, hub_cache):
    model = load_model(model_cfg(name, pretrained=False), seed=0)
    arch = HUB_ARCHITECTURES[HUB_MODELS[name]["repo"]]
    for field in ("n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx", "positional_embedding_type"):
        assert getattr(model.cfg, field) == arch[field], field
    assert bool(model.cfg.attn_only) == arch.get("attn_only", False)
    assert model.cfg.normalization_type == normalization  # as TransformerLens leaves it after fold_ln
    assert Graph(Architecture.from_config(model.cfg)).n_edges == n_edges
    assert "random weights" in model.cfg.model_name
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_random_weights_depend_on_the_seed_alone(no_network):
    first = load_model(model_cfg("redwood_attn_2l", pretrained=False), seed=1)
    torch.manual_seed(123)  # the global RNG's state must not matter
    again = load_model(model_cfg("redwood_attn_2l", pretrained=False), seed=1)
    other = load_model(model_cfg("redwood_attn_2l", pretrained=False), seed=2)
    assert torch.equal(first.W_Q, again.W_Q) and not torch.equal(first.W_Q, other.W_Q)


def test_random_weights_grow_the_vocabulary_for_a_foreign_tokenizer():
    class FakeTokenizer:
        def __len__(self):
            return 50257
    model = load_model(model_cfg("attn_only_4l", pretrained=False), tokenizer=FakeTokenizer())
    assert model.cfg.d_vocab == 50257  # GPT-2's ids fit; attn-only-4l's own vocabulary has 48,262


def test_the_gpt2_architecture_is_transformer_lens_reading_of_gpt2s_config(hub_cache, no_network):
    cache_repo(hub_cache, "gpt2", {"config.json": GPT2_CONFIG_JSON})
    cfg = tl_loading.get_pretrained_model_config("gpt2", cache_dir=str(hub_cache), local_files_only=True)
    for field, value in HUB_ARCHITECTURES["gpt2"].items():
        assert getattr(cfg, field) == value, field


@pytest.mark.parametrize("name", ["gpt2", "attn_only_4l", "redwood_attn_2l"])
def test_missing_weights_offline_stop_at_once_with_one_line(name, hub_cache, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.time()
    with pytest.raises(ModelUnavailableError) as error:
        load_model(model_cfg(name, pretrained=True))
    assert time.time() - started < 2
    message = str(error.value)
    assert "\n" not in message
    assert name in message and HUB_MODELS[name]["repo"] in message
    assert "model.pretrained=false" in message and "HF_HOME" in message


def test_a_model_the_engine_cannot_run_is_refused_before_any_download(hub_cache, no_network, monkeypatch):
    repo = HUB_MODELS["redwood_attn_2l"]["repo"]
    monkeypatch.setitem(HUB_ARCHITECTURES, repo, {**HUB_ARCHITECTURES[repo], "positional_embedding_type": "alibi"})
    with pytest.raises(UnsupportedModelError, match="redwood_attn_2l: positional_embedding_type='alibi'"):
        load_model(model_cfg("redwood_attn_2l", pretrained=True))


def test_an_unreachable_hub_is_detected_within_seconds(hub_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    started = time.time()
    with pytest.raises(ModelUnavailableError, match="gpt2: the weights of gpt2 are not .* the hub cannot be reached"):
        load_model(model_cfg("gpt2", pretrained=True))
    assert time.time() - started < loading.HUB_PROBE_TIMEOUT_S + 2


def test_cached_gpt2_weights_load_offline_with_transformer_lens_processing(hub_cache, no_network, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    # GPT-2 small's graph (12 layers x 12 heads) on tiny widths, saved as the hub stores it.
    config = GPT2Config(n_layer=12, n_head=12, n_embd=24, n_positions=32, vocab_size=50257)
    torch.manual_seed(0)
    hf_model = GPT2LMHeadModel(config).eval()
    hf_model.save_pretrained(tmp_path / "saved")
    cache_repo(hub_cache, "gpt2", {"config.json": {**json.loads((tmp_path / "saved" / "config.json").read_text()),
                                                   "n_ctx": 32}})
    snapshot = next((hub_cache / "models--gpt2" / "snapshots").iterdir())
    assert loading.cached_weights("gpt2") is None  # a config alone is not a model
    (snapshot / "model.safetensors").write_bytes((tmp_path / "saved" / "model.safetensors").read_bytes())
    assert loading.cached_weights("gpt2") == snapshot / "model.safetensors"

    model = load_model(model_cfg("gpt2", pretrained=True))
    assert model.cfg.d_model == 24 and model.cfg.normalization_type == "LNPre"  # layer norm folded
    assert model.W_U.mean(-1).abs().max() < 1e-5  # unembedding centred
    tokens = torch.randint(0, 50257, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = F.log_softmax(hf_model(tokens).logits, -1)
        assert torch.allclose(F.log_softmax(model(tokens), -1), expected, atol=1e-4)


def _neel_files(n_layers: int) -> dict:
    """A TransformerLens-format repo (config.json + *_final.pth) with attn-only-4l's head layout."""
    cfg = HookedTransformerConfig(n_layers=n_layers, n_heads=8, d_model=32, d_head=4, n_ctx=16, d_vocab=100,
                                  attn_only=True, normalization_type="LN", act_fn="solu_ln", seed=0)
    reference = HookedTransformer(cfg).eval()
    with torch.no_grad():  # non-trivial layer norms and biases, so that folding them is tested
        for name, param in reference.named_parameters():
            if name.endswith((".w", ".b", "b_Q", "b_K", "b_V", "b_O", "b_U")):
                param.add_(0.1 * torch.randn_like(param))
    config = dict(d_model=32, n_layers=n_layers, d_mlp=128, d_head=4, n_heads=8, n_ctx=16, d_vocab=100,
                  tokenizer_name="NeelNanda/gpt-neox-tokenizer-digits", act_fn="solu_ln", attn_only=True,
                  normalization_type="LN", shortformer_pos=False)
    return reference, {"config.json": config, "Attn_Only_4L512W_C4_Code_final.pth": reference.state_dict()}


def test_cached_transformer_lens_format_weights_load_offline(hub_cache, no_network):
    reference, files = _neel_files(n_layers=4)
    cache_repo(hub_cache, "NeelNanda/Attn_Only_4L512W_C4_Code", files)
    model = load_model(model_cfg("attn_only_4l", pretrained=True))
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.normalization_type) == (4, 8, "LNPre")
    tokens = torch.randint(0, 100, (3, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(F.log_softmax(model(tokens), -1), F.log_softmax(reference(tokens), -1), atol=1e-4)


def test_cached_weights_of_another_architecture_are_refused(hub_cache, no_network):
    _, files = _neel_files(n_layers=3)
    cache_repo(hub_cache, "NeelNanda/Attn_Only_4L512W_C4_Code", files)
    with pytest.raises(ValueError, match="disagrees with circuitfind's on n_layers"):
        load_model(model_cfg("attn_only_4l", pretrained=True))


def test_gpt2_tokenizer_from_a_folder_named_by_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(loading.GPT2_TOKENIZER_ENV, str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="lacks vocab.json and merges.txt"):
        loading.gpt2_tokenizer()


def test_pythia_70m_random_weights_build_offline_and_the_engine_runs_them(no_network):
    """Today's families through the model configs: Pythia-70m (partial rotary, parallel blocks)."""
    from circuitfind.engine import PatchEngine, make_ablation
    from circuitfind.runs.pipeline import compose_config
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose_config("model=pythia-70m", "model.pretrained=false").model)
    model = load_model(cfg, seed=0)
    assert (model.cfg.rotary_dim, model.cfg.d_head, model.cfg.parallel_attn_mlp) == (16, 64, True)
    assert model.cfg.dtype == torch.float32
    graph = Graph(Architecture.from_config(model.cfg))
    tokens = torch.randint(0, 1000, (1, 5))
    engine = PatchEngine(model, graph, tokens, make_ablation("zero", model, graph, tokens, tokens))
    torch.testing.assert_close(engine.logits(graph.full_mask()), model(tokens), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name, rotary_dim", [("pythia-70m", 2), ("qwen2.5-0.5b", 8)])
def test_a_resized_rotary_model_rotates_the_same_share_of_its_smaller_heads(no_network, name, rotary_dim):
    """Pythia rotates a quarter of each head (16 of 64), Qwen all of it: resized to d_head 8, the
    rotary width follows (2 and 8), and the engine runs the model."""
    from circuitfind.engine import PatchEngine, make_ablation
    from circuitfind.runs.pipeline import compose_config
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose_config("model=hf", f"model.name={name}", "model.pretrained=false",
                                                "model.n_layers=1", "model.n_heads=4", "model.d_model=32").model)
    model = load_model(cfg, seed=0)
    assert (model.cfg.d_head, model.cfg.rotary_dim) == (8, rotary_dim)
    graph = Graph(Architecture.from_config(model.cfg))
    tokens = torch.randint(0, 1000, (1, 5))
    engine = PatchEngine(model, graph, tokens, make_ablation("zero", model, graph, tokens, tokens))
    torch.testing.assert_close(engine.logits(graph.full_mask()), model(tokens), rtol=0, atol=1e-4)


@pytest.mark.parametrize("device, expected", [("cpu", torch.float32), ("cuda", torch.bfloat16)])
def test_billion_parameter_configs_use_half_precision_on_a_gpu(device, expected):
    from circuitfind.runs.pipeline import compose_config

    for name in ("qwen2.5-0.5b", "llama-3.2-1b", "gemma-2-2b"):
        cfg = compose_config(f"model={name}").model
        assert loading.weights_dtype(cfg, device) == expected, name
    with pytest.raises(ValueError, match="dtype 'float13' is not a torch floating-point dtype"):
        loading.weights_dtype(dict(name="x", dtype="float13"), "cpu")


def test_gemma_2_random_weights_build_offline_with_post_norms_and_the_engine_runs_them(no_network):
    """Gemma-2's architecture (post-norms, GQA 8:4, soft-caps, local/global layers), shrunk to two
    thin layers through model=hf (its 256,000-token vocabulary stays)."""
    from circuitfind.engine import PatchEngine, make_ablation
    from circuitfind.runs.pipeline import compose_config
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose_config("model=hf", "model.name=google/gemma-2-2b", "model.pretrained=false",
                                                "model.n_layers=2", "model.d_model=64").model)
    model = load_model(cfg, seed=0)
    assert model.cfg.use_normalization_before_and_after and model.cfg.n_key_value_heads == 4
    assert hasattr(model.blocks[1], "ln1_post") and model.cfg.attn_types[:2] == ["local", "global"]
    graph = Graph(Architecture.from_config(model.cfg))
    tokens = torch.randint(0, 1000, (2, 5))
    engine = PatchEngine(model, graph, tokens[:1], make_ablation("corrupted", model, graph, tokens[:1], tokens[1:]))
    torch.testing.assert_close(engine.logits(graph.full_mask()), model(tokens[:1]), rtol=0, atol=1e-4)
    nothing = torch.zeros(graph.n_edges)
    torch.testing.assert_close(engine.logits(nothing), model(tokens[1:]), rtol=0, atol=1e-4)
