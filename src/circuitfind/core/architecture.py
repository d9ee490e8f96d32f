"""Which models circuitfind can patch, decided from a TransformerLens config alone.

The patching engine re-implements a block's maths from the model's weights (``engine/``), so it
refuses architectures it does not cover, by name, before a model is built or a weight fetched.
It sits below both the engine and the model loaders, which call it with a config (or a model,
whose ``.cfg`` it reads).
"""

from __future__ import annotations


class UnsupportedModelError(ValueError):
    """The model uses a feature the patching engine does not implement."""


# Config flags whose maths the engine does not re-implement.  (Gemma-2's
# use_normalization_before_and_after is supported: see ``engine/postnorm.py``.)
UNSUPPORTED_FLAGS = ("use_qk_norm", "use_attention_sinks", "use_logn_attn",
                     "ungroup_grouped_query_attention", "load_in_4bit", "use_split_qkv_normalized_input")
POSITIONAL_EMBEDDINGS = ("standard", "shortformer", "rotary")


def check_supported(model_or_cfg) -> None:
    """Raise ``UnsupportedModelError`` naming every feature of the config (``model.cfg`` when given
    a model) that the engine does not implement."""
    cfg = getattr(model_or_cfg, "cfg", model_or_cfg)
    problems = []
    if cfg.positional_embedding_type not in POSITIONAL_EMBEDDINGS:
        problems.append(f"positional_embedding_type={cfg.positional_embedding_type!r} "
                        f"(only {', '.join(map(repr, POSITIONAL_EMBEDDINGS))})")
    for flag in UNSUPPORTED_FLAGS:
        if getattr(cfg, flag, False):
            problems.append(f"{flag}=True")
    if getattr(cfg, "original_architecture", None) in _post_norm_architectures():
        problems.append(f"post-norm blocks ({cfg.original_architecture})")
    if getattr(cfg, "use_normalization_before_and_after", False) and cfg.normalization_type not in ("RMS", "RMSPre"):
        # TransformerLens builds the post-norms for RMS models only (Gemma-2)
        problems.append(f"use_normalization_before_and_after with normalization_type={cfg.normalization_type!r}")
    if getattr(cfg, "clip_qkv", None) is not None:
        problems.append("clip_qkv")
    if cfg.attention_dir not in ("causal", "bidirectional"):
        problems.append(f"attention_dir={cfg.attention_dir!r}")
    if problems:
        raise UnsupportedModelError(
            f"circuitfind's patching engine does not support {cfg.model_name}: {', '.join(problems)}"
        )


# Architectures whose blocks normalise after the residual add (none of which the engine runs):
# TransformerLens 3's POST_NORM_ARCHITECTURES, written here so that nothing below the model view
# imports TransformerLens (a test holds the two together).
POST_NORM_ARCHITECTURES = ("Olmo2ForCausalLM", "Olmo3ForCausalLM")


def _post_norm_architectures() -> tuple[str, ...]:
    return POST_NORM_ARCHITECTURES
