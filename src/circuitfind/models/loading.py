"""Loading the models of the ACDC paper's tasks from a model config (``configs/model/NAME.yaml``).

Two kinds of model config:

``kind: hub``      a model on the Hugging Face hub (``repo``), loaded with TransformerLens' own
                   config conversion and weight processing (``fold_ln``, ``center_writing_weights``,
                   ``center_unembed``).  Its weights come from the local Hugging Face cache; where
                   they are not cached they are downloaded, and where the hub cannot be reached
                   either the run stops at once with ``ModelUnavailableError``, never falling back
                   to another model.
``kind: shipped``  a model the project trained itself, its weights inside the package
                   (``scripts/train_induction.py`` -> ``weights/induction_2l.pt``,
                   ``scripts/train_algo.py`` -> ``weights/algo_4l.pt``, ``algo_6l.pt``).
``kind: hf``       any TransformerLens model name (``model=hf model.name=pythia-70m``).  Names whose
                   architecture is written down here (gpt2, attn-only-4l, redwood_attn_2l) go the
                   ``hub`` way; others take TransformerLens' config and loader, which need the hub
                   (or its cache).  With random weights the architecture's size can be changed
                   (``model.n_layers=2 model.d_model=64 ...``), for small offline runs.

``pretrained: false`` builds the same architecture with seeded random weights and touches neither
the hub nor the cache: it is how every task's pipeline runs offline in tests and dry runs.  The
architectures of the hub models are therefore also written down here (``HUB_ARCHITECTURES``); when
real weights are loaded, their own config must agree with it on everything the graph depends on.

Models come without a tokenizer attached (TransformerLens would fetch one from the hub); tasks
tokenise with ``load_tokenizer``.
"""

from __future__ import annotations

import logging
import pathlib
from types import SimpleNamespace

import torch

from ..core.architecture import check_supported
# GPT2_TOKENIZER_ENV, HUB_PROBE_TIMEOUT_S, ModelUnavailableError: what a load reads, waits for, raises
from .hub import (GPT2_TOKENIZER_ENV, HUB_PROBE_TIMEOUT_S, ModelUnavailableError, cached_file,  # noqa: F401
                  cached_weights_any, gpt2_tokenizer, hub_cache_dir, hub_reachable, unavailable_error)
from .shipped import read_shipped
from .view import backend, tl3

log = logging.getLogger(__name__)

# A model view (models/view): a TransformerLens 3 HookedTransformer, or a TransformerLens 4
# TransformerBridge wrapped as one.
ModelView = object

# GPT-NeoX blocks as Pythia uses them: partial rotary (a quarter of each head), parallel attention and MLP.
_PYTHIA = dict(
    d_head=64, n_ctx=2048, eps=1e-5, d_vocab=50304, act_fn="gelu", use_attn_scale=True, use_local_attn=False,
    scale_attn_by_inverse_layer_idx=False, parallel_attn_mlp=True, positional_embedding_type="rotary",
    rotary_adjacent_pairs=False, normalization_type="LN", default_prepend_bos=False, rotary_dim=16,
    rotary_base=10000, original_architecture="GPTNeoXForCausalLM",
)

# The hub models' configs as TransformerLens builds them (before weight processing).  GPT-2's is
# checked against TransformerLens' conversion of GPT-2's published config.json in the tests; the
# other two are TransformerLens' reading of their repos' config.json files.
HUB_ARCHITECTURES: dict[str, dict] = {
    "gpt2": dict(
        n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, n_ctx=1024, d_vocab=50257,
        act_fn="gelu_new", normalization_type="LN", eps=1e-5, positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel",
    ),
    "NeelNanda/Attn_Only_4L512W_C4_Code": dict(
        n_layers=4, n_heads=8, d_model=512, d_head=64, n_ctx=1024, d_vocab=48262, attn_only=True,
        normalization_type="LN", positional_embedding_type="standard", original_architecture="neel",
    ),
    # Redwood's 2-layer model is a shortformer: positional embeddings enter the queries and keys
    # only, never the residual stream (the engine adds them there; see engine/model_reads.py).
    "ArthurConmy/redwood_attn_2l": dict(
        n_layers=2, n_heads=8, d_model=256, d_head=32, n_ctx=2048, d_vocab=50259, attn_only=True,
        normalization_type="LN", positional_embedding_type="shortformer", original_architecture="neel",
    ),
    # Today's families.  Pythia's and Qwen's configs are TransformerLens' conversion of their repos'
    # config.json (which needs the hub, so the values are written here); Llama's and Gemma's are what
    # TransformerLens 3.9 builds from the name alone (convert_hf_model_config, offline).
    "EleutherAI/pythia-70m": dict(_PYTHIA, d_model=512, n_heads=8, d_mlp=2048, n_layers=6),
    "EleutherAI/pythia-160m": dict(_PYTHIA, d_model=768, n_heads=12, d_mlp=3072, n_layers=12),
    "Qwen/Qwen2.5-0.5B": dict(
        d_model=896, d_head=64, n_heads=14, n_key_value_heads=2, d_mlp=4864, n_layers=24, n_ctx=32768, eps=1e-6,
        d_vocab=151936, act_fn="silu", use_attn_scale=True, normalization_type="RMS", positional_embedding_type="rotary",
        rotary_base=1000000, rotary_adjacent_pairs=False, rotary_dim=64, tokenizer_prepends_bos=True, final_rms=True,
        gated_mlp=True, default_prepend_bos=False, original_architecture="Qwen2ForCausalLM",
    ),
    "meta-llama/Llama-3.2-1B": dict(
        d_model=2048, d_head=64, n_heads=32, d_mlp=8192, n_layers=16, n_ctx=2048, eps=1e-5, d_vocab=128256,
        act_fn="silu", n_key_value_heads=8, normalization_type="RMS", positional_embedding_type="rotary",
        rotary_adjacent_pairs=False, rotary_dim=64, final_rms=True, gated_mlp=True, rotary_base=500000.0,
        use_NTK_by_parts_rope=True, NTK_by_parts_low_freq_factor=1.0, NTK_by_parts_high_freq_factor=4.0,
        NTK_by_parts_factor=32.0, NTK_original_ctx_len=8192, original_architecture="LlamaForCausalLM",
    ),
    # Gemma-2 normalises each attention and MLP output again before the residual stream
    # (use_normalization_before_and_after; see the engine's post_norm_inputs).
    "google/gemma-2-2b": dict(
        d_model=2304, d_head=256, n_heads=8, d_mlp=9216, n_layers=26, n_ctx=8192, eps=1e-6, d_vocab=256000,
        act_fn="gelu_pytorch_tanh", initializer_range=0.02, normalization_type="RMS", rotary_base=10000.0,
        positional_embedding_type="rotary", use_attn_scale=True, n_key_value_heads=4, window_size=4096,
        use_local_attn=True, attn_types=["local", "global"] * 13, attn_scores_soft_cap=50.0,
        output_logits_soft_cap=30.0, gated_mlp=True, final_rms=True, use_normalization_before_and_after=True,
        original_architecture="Gemma2ForCausalLM",
    ),
}
# The facts the edge graph and the patching engine depend on, with their defaults: real weights
# must agree on these.
GRAPH_FACTS = {"n_layers": None, "n_heads": None, "attn_only": False, "positional_embedding_type": "standard",
               "n_key_value_heads": None, "parallel_attn_mlp": False}



# ---- tokenizers ----------------------------------------------------------------------------------
_TOKENIZERS: dict[tuple, object] = {}  # (name, cache) -> the tokenizer


def load_tokenizer(model_cfg: dict):
    if model_cfg.get("kind") == "hf":
        return _load_hub_tokenizer(hf_as_hub(model_cfg))
    return _load_hub_tokenizer(model_cfg)


def _load_hub_tokenizer(model_cfg: dict):
    """The tokenizer of the model ``model_cfg`` describes (None for models that read token ids).

    A model with random weights has no vocabulary of its own to honour, so where its tokenizer cannot
    be had offline it reads GPT-2's BPE instead (``load_model`` then sizes its vocabulary to fit)."""
    if model_cfg.get("kind") != "hub":
        return None
    name = model_cfg.get("tokenizer") or model_cfg["repo"]
    if name == "gpt2":
        return gpt2_tokenizer()
    key = (name, hub_cache_dir())
    if key in _TOKENIZERS:
        return _TOKENIZERS[key]
    from transformers import AutoTokenizer

    if cached_file(name, "tokenizer_config.json") or cached_file(name, "tokenizer.json"):
        tokenizer = AutoTokenizer.from_pretrained(name, cache_dir=hub_cache_dir(), local_files_only=True)
    elif hub_reachable():
        tokenizer = AutoTokenizer.from_pretrained(name, cache_dir=hub_cache_dir())
    elif not model_cfg.get("pretrained", True):
        log.warning("%s's tokenizer (%s) is not cached; its random-weight stand-in reads GPT-2 tokens",
                    model_cfg["name"], name)
        return gpt2_tokenizer()
    else:
        raise unavailable_error(model_cfg["name"], f"the tokenizer {name}", plural=False)
    _TOKENIZERS[key] = tokenizer
    return tokenizer


# ---- models --------------------------------------------------------------------------------------
def load_model(model_cfg: dict, device: str | torch.device = "cpu", seed: int = 0,
               tokenizer=None) -> ModelView:
    """The HookedTransformer ``model_cfg`` describes, frozen and in eval mode.

    ``seed`` fixes random weights (``pretrained: false``).  ``tokenizer``: the one the task will
    encode with; a random-weight model whose vocabulary is smaller than it grows to fit."""
    kind = model_cfg.get("kind")
    if backend() == "tl4":
        return _load_through_bridge(model_cfg, device, seed, tokenizer)
    if kind == "hf":
        model = _load_hf_model(model_cfg, device, seed, tokenizer)
    elif kind == "hub":
        model = _load_hub_model(model_cfg, device, seed, tokenizer)
    elif kind == "shipped":
        model = _load_shipped_model(model_cfg, device, seed)
    else:
        raise ValueError(f"model {model_cfg.get('name')!r} has kind {kind!r}; load_model handles kinds hub, hf "
                         "and shipped")
    return model.eval().requires_grad_(False)


def weights_dtype(model_cfg: dict, device) -> torch.dtype:
    """The weights' dtype: ``dtype`` (default float32), or on a GPU ``gpu_dtype`` where the config
    sets one (the billion-parameter models: half the memory, and the GPU's fast path)."""
    on_gpu = torch.device(device).type == "cuda"
    name = (model_cfg.get("gpu_dtype") if on_gpu else None) or model_cfg.get("dtype") or "float32"
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"model {model_cfg.get('name')}: dtype {name!r} is not a torch floating-point dtype")
    return dtype


def _random_model(cfg, seed: int) -> ModelView:
    # A private RNG stream: the weights depend on the seed alone, not on what ran before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return tl3.hooked_transformer(cfg)


def _processed_normalization(normalization_type: str, fold_ln: bool) -> str:
    """What TransformerLens' loader turns the normalisation into when it folds layer norm."""
    if fold_ln and normalization_type in ("LN", "LNPre"):
        return "LNPre"
    if fold_ln and normalization_type in ("RMS", "RMSPre"):
        return "RMSPre"
    return normalization_type


def _load_hub_model(model_cfg: dict, device, seed: int, tokenizer) -> ModelView:
    name, repo = model_cfg["name"], model_cfg["repo"]
    if repo not in HUB_ARCHITECTURES:
        raise ValueError(f"model {name}: unknown hub repo {repo!r}; known: {', '.join(HUB_ARCHITECTURES)}")
    fold_ln = bool(model_cfg.get("fold_ln", False))
    # Refuse what the patching engine cannot run before building or fetching anything (from the config alone).
    check_supported(tl3.config(**HUB_ARCHITECTURES[repo], model_name=name))
    if not model_cfg.get("pretrained", True):
        arch = dict(HUB_ARCHITECTURES[repo])
        # Random weights are drawn for the processed architecture (LNPre where layer norm is folded),
        # so a dry run exercises the same parameter set as the real model.  Centring is a property of
        # trained weights and is not imitated.
        arch["normalization_type"] = _processed_normalization(arch["normalization_type"], fold_ln)
        if tokenizer is not None and len(tokenizer) > arch["d_vocab"]:
            arch["d_vocab"] = len(tokenizer)
        cfg = tl3.config(**arch, model_name=f"{name} (random weights)", device=str(device),
                                      dtype=weights_dtype(model_cfg, device))
        return _random_model(cfg, seed)
    return _load_pretrained(model_cfg, device)


def _transformer_lens_format(repo: str) -> bool:
    """Whether the repo holds TransformerLens weights (Neel Nanda's and Redwood's models) rather than
    a transformers model."""
    return HUB_ARCHITECTURES[repo]["original_architecture"] == "neel"


def _weight_files(repo: str) -> tuple[list[str], pathlib.Path | None]:
    """(the files a download fetches, the cached weights file or None).

    HF-format repos (GPT-2) hold ``model.safetensors``; TransformerLens-format repos (NeelNanda's,
    Redwood's) hold ``config.json`` and a ``*final.pth`` state dict."""
    config = cached_file(repo, "config.json")
    if _transformer_lens_format(repo):
        weights = next(iter(sorted(config.parent.glob("*final.pth"))), None) if config else None
        return ["config.json", "*final.pth"], weights
    weights = cached_file(repo, "model.safetensors") or cached_file(repo, "pytorch_model.bin")
    return ["config.json", "model.safetensors", "generation_config.json"], weights if config else None


def cached_weights(repo: str) -> pathlib.Path | None:
    """The weights file of hub repo ``repo`` in the local Hugging Face cache, or None (what
    loading checks before it downloads)."""
    return _weight_files(repo)[1]


def _load_pretrained(model_cfg: dict, device) -> ModelView:
    from huggingface_hub import snapshot_download
    tl_loading = tl3.loading_from_pretrained()

    name, repo = model_cfg["name"], model_cfg["repo"]
    arch = HUB_ARCHITECTURES[repo]
    patterns, weights = _weight_files(repo)
    if weights is None:
        if not hub_reachable():
            raise unavailable_error(name, f"the weights of {repo}", plural=True)
        snapshot_download(repo, allow_patterns=patterns, cache_dir=hub_cache_dir())
        _, weights = _weight_files(repo)
        if weights is None:
            raise ModelUnavailableError(f"{name}: the hub repo {repo} holds no weights file matching {patterns}")

    # From here on everything is read from the cache: local_files_only keeps TransformerLens and
    # transformers off the network.  TransformerLens' own from_pretrained lists a TransformerLens-
    # format repo's files online even when they are cached, so its steps are taken one by one.
    offline = dict(cache_dir=hub_cache_dir(), local_files_only=True)
    fold_ln = bool(model_cfg.get("fold_ln", False))
    cfg = tl_loading.get_pretrained_model_config(repo, fold_ln=fold_ln, device=str(device),
                                                 dtype=weights_dtype(model_cfg, device), **offline)
    disagreements = [f"{fact} {getattr(cfg, fact)!r} (expected {arch.get(fact, default)!r})"
                     for fact, default in GRAPH_FACTS.items() if getattr(cfg, fact) != arch.get(fact, default)]
    if disagreements:
        raise ValueError(f"{name}: the cached config of {repo} disagrees with circuitfind's on "
                         f"{', '.join(disagreements)}")
    if _transformer_lens_format(repo):
        state_dict = torch.load(weights, map_location="cpu", weights_only=True)
    else:
        state_dict = tl_loading.get_pretrained_state_dict(repo, cfg, **offline)
    cfg.tokenizer_name = None  # no hub lookup for a tokenizer: tasks bring their own
    model = tl3.hooked_transformer(cfg, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=fold_ln,
        center_writing_weights=bool(model_cfg.get("center_writing_weights", False)),
        center_unembed=bool(model_cfg.get("center_unembed", False)),
    )
    return model.to(device)


# ---- any TransformerLens model name (kind: hf) -----------------------------------------------------
# Architecture settings a random-weight model=hf may change (null in configs/model/hf.yaml: keep).
ARCH_OVERRIDES = ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "n_ctx", "attn_only")
# Tokenizers of the repos in HUB_ARCHITECTURES (configs/model/*.yaml); other repos bring their own.
HUB_TOKENIZERS = {"gpt2": "gpt2", "NeelNanda/Attn_Only_4L512W_C4_Code": "NeelNanda/gpt-neox-tokenizer-digits",
                  "ArthurConmy/redwood_attn_2l": "gpt2"}


def official_name(name: str) -> str:
    """TransformerLens' official hub name for ``name`` (an alias such as ``attn-only-4l`` or the name
    itself); one line for names it does not know."""
    tl_loading = tl3.loading_from_pretrained()

    try:
        return tl_loading.get_official_model_name(str(name))
    except ValueError:
        raise ValueError(f"model.name={name!r} is not a TransformerLens model name (see "
                         "transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES)") from None


def hf_as_hub(model_cfg: dict) -> dict:
    """A ``kind: hf`` config as the ``kind: hub`` config the rest of the loader reads."""
    if not model_cfg.get("name"):
        raise ValueError("model=hf needs model.name=<a TransformerLens model name>, e.g. model.name=gpt2")
    repo = official_name(model_cfg["name"]) if backend() == "tl3" else hub_repo(model_cfg["name"])
    return dict(model_cfg, kind="hub", repo=repo,
                tokenizer=model_cfg.get("tokenizer") or HUB_TOKENIZERS.get(repo, repo))


def arch_overrides(model_cfg: dict) -> dict:
    """The architecture settings a random-weight hf model changes; refused for real weights."""
    overrides = {k: model_cfg[k] for k in ARCH_OVERRIDES if model_cfg.get(k) is not None}
    if overrides and model_cfg.get("pretrained", True):
        raise ValueError(f"model.{next(iter(overrides))} changes the architecture, which only random weights "
                         "can do: add model.pretrained=false")
    return overrides


def _resized(arch: dict, overrides: dict) -> dict:
    """``arch`` with ``overrides``; a new width or head count rescales what follows from it (d_head =
    d_model / n_heads, d_mlp = 4 d_model, rotary_dim the same share of d_head) unless that is given
    too."""
    out = dict(arch, **overrides)
    if ("d_model" in overrides or "n_heads" in overrides) and "d_head" not in overrides:
        out["d_head"] = out["d_model"] // out["n_heads"]
    if arch.get("rotary_dim") and arch.get("d_head") and out["d_head"] != arch["d_head"]:
        # the rotated share of each head stays what it was (Pythia a quarter, Qwen and Llama all):
        # an even count, at least 2, at most the new d_head
        share = arch["rotary_dim"] / arch["d_head"]
        out["rotary_dim"] = min(out["d_head"], max(2, int(out["d_head"] * share) // 2 * 2))
    if "d_model" in overrides and "d_mlp" not in overrides and not out.get("attn_only", False):
        out["d_mlp"] = 4 * out["d_model"]
    return out


def _load_hf_model(model_cfg: dict, device, seed: int, tokenizer) -> ModelView:
    spec = hf_as_hub(model_cfg)
    overrides = arch_overrides(model_cfg)
    repo, name = spec["repo"], spec["name"]
    if repo in HUB_ARCHITECTURES and not overrides:
        return _load_hub_model(spec, device, seed, tokenizer)
    if spec.get("pretrained", True):
        return _load_with_transformer_lens(spec, device)
    if repo in HUB_ARCHITECTURES:
        arch = dict(HUB_ARCHITECTURES[repo])
    else:
        arch = _transformer_lens_config(spec, device).to_dict()
    arch = _resized(arch, overrides)
    arch["normalization_type"] = _processed_normalization(arch["normalization_type"],
                                                          bool(spec.get("fold_ln", False)))
    if tokenizer is not None and len(tokenizer) > arch["d_vocab"]:
        arch["d_vocab"] = len(tokenizer)
    arch.update(model_name=f"{name} (random weights)", device=str(device))
    fields = tl3.config_fields()
    cfg = tl3.config(**{k: v for k, v in arch.items() if k in fields and fields[k].init})
    check_supported(cfg)
    return _random_model(cfg, seed)


def _transformer_lens_config(spec: dict, device):
    """TransformerLens' config for a repo not written down here: from the cache, or the hub."""
    tl_loading = tl3.loading_from_pretrained()

    repo = spec["repo"]
    if cached_file(repo, "config.json") is None and not hub_reachable():
        raise ModelUnavailableError(f"{spec['name']}: the config of {repo} is not in the Hugging Face cache "
                                    f"({hub_cache_dir()}) and the hub cannot be reached; TransformerLens builds "
                                    "even random weights from it. Offline, model.name=gpt2, attn-only-4l or "
                                    "redwood_attn_2l work (with model.pretrained=false)")
    return tl_loading.get_pretrained_model_config(repo, fold_ln=bool(spec.get("fold_ln", False)),
                                                  device=str(device))


def _load_with_transformer_lens(spec: dict, device) -> ModelView:
    """Real weights of a repo not written down here, through TransformerLens' own loader (needs the
    hub or a cache holding the weights)."""
    repo = spec["repo"]
    cfg = _transformer_lens_config(spec, device)
    check_supported(cfg)  # before fetching any weights
    if cached_weights_any(repo) is None and not hub_reachable():
        raise unavailable_error(spec["name"], f"the weights of {repo}", plural=True)
    model = tl3.from_pretrained(
        repo, fold_ln=bool(spec.get("fold_ln", False)),
        center_writing_weights=bool(spec.get("center_writing_weights", False)),
        center_unembed=bool(spec.get("center_unembed", False)), device=str(device))
    return model


# ---- models the project ships --------------------------------------------------------------------
def _load_shipped_model(model_cfg: dict, device, seed: int) -> ModelView:
    name = model_cfg["name"]
    data = read_shipped(name)
    pretrained = model_cfg.get("pretrained", True)
    cfg = tl3.config(**data["cfg"], device=str(device),
                                  model_name=name if pretrained else f"{name} (random weights)")
    model = _random_model(cfg, seed)
    if pretrained:
        model.load_state_dict({**model.state_dict(), **data["state_dict"]}, strict=True)
    return model


# ---- TransformerLens 4: every model through a TransformerBridge over a Hugging Face model ----------
def hub_repo(name: str) -> str:
    """The hub repo of ``name`` under TransformerLens 4: a repo written down here, by its full name or
    its last part in any case (``pythia-70m``, ``llama-3.2-1b``), else TransformerLens 4's alias table,
    else the name itself (a hub repo)."""
    for repo in HUB_ARCHITECTURES:
        if str(name).lower() in (repo.lower(), repo.split("/")[-1].lower()):
            return repo
    from .view import tl4

    return tl4.official_name(str(name))


def _load_through_bridge(model_cfg: dict, device, seed: int, tokenizer) -> ModelView:
    """``load_model`` under TransformerLens 4: a TransformerBridge over a Hugging Face model (random
    weights of the written-down architecture, built offline, or the real weights), or for the shipped
    models a native bridge holding their weights, as a model view."""
    from .view import tl4

    kind = model_cfg.get("kind")
    if kind == "shipped":  # HookedTransformer weights: in TransformerLens 4's native model
        from .view import native

        data, name = read_shipped(model_cfg["name"]), model_cfg["name"]
        pretrained = model_cfg.get("pretrained", True)
        return native.native_model_view(dict(data["cfg"], model_name=name if pretrained else f"{name} (random weights)"),
                                        data["state_dict"] if pretrained else None, seed=seed,
                                        dtype=weights_dtype(model_cfg, device), device=device)
    if kind not in ("hub", "hf"):
        raise ValueError(f"model {model_cfg.get('name')!r} has kind {kind!r}; load_model handles kinds hub, hf "
                         "and shipped")
    overrides = arch_overrides(model_cfg) if kind == "hf" else {}
    spec = hf_as_hub(model_cfg) if kind == "hf" else model_cfg
    name, repo = spec["name"], spec["repo"]
    dtype = weights_dtype(model_cfg, device)
    if not spec.get("pretrained", True):
        if repo not in HUB_ARCHITECTURES:
            raise ValueError(f"model {name}: random weights under TransformerLens 4 are built for the written-down "
                             f"architectures ({', '.join(HUB_ARCHITECTURES)}), not {repo!r}")
        arch = _resized(dict(HUB_ARCHITECTURES[repo]), overrides)
        if arch.get("original_architecture") == "neel":
            raise ValueError(f"model {name}: {repo} is a TransformerLens-format model with no Hugging Face "
                             "architecture; under TransformerLens 4 it does not load (use TransformerLens 3.9)")
        if tokenizer is not None and len(tokenizer) > arch["d_vocab"]:
            arch["d_vocab"] = len(tokenizer)
        check_supported(SimpleNamespace(**{"model_name": name, "attention_dir": "causal", **arch}))
        view = tl4.random_bridge(arch, seed, dtype=dtype, tokenizer=tokenizer, device=device)
        view.cfg.model_name = f"{name} (random weights)"
        return view
    if repo in HUB_ARCHITECTURES and HUB_ARCHITECTURES[repo].get("original_architecture") == "neel":
        raise ValueError(f"model {name}: {repo} is a TransformerLens-format model with no Hugging Face "
                         "architecture; under TransformerLens 4 it does not load (use TransformerLens 3.9)")
    local = (pathlib.Path(repo) / "config.json").is_file()  # a folder saved with save_pretrained
    if not local and cached_weights_any(repo) is None and not hub_reachable():
        raise unavailable_error(name, f"the weights of {repo}", plural=True)
    view = tl4.pretrained_bridge(repo, device, dtype)
    check_supported(view)
    return view
