"""Tiny random models of today's block families, each built from a TransformerLens config.

Every family sets the options its real models use (see configs/model/*.yaml for the full-size
shapes); biases and norm weights are random (TransformerLens starts them at 0 and 1, which would
hide mistakes), except in the families that have no biases.
"""

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

FAMILIES: dict[str, dict] = {
    # full rotary, LayerNorm, sequential blocks
    "rotary": dict(positional_embedding_type="rotary", rotary_dim=8),
    # Pythia / GPT-NeoX: partial rotary (rotary_dim < d_head), parallel attention and MLP
    "pythia": dict(positional_embedding_type="rotary", rotary_dim=4, parallel_attn_mlp=True),
    # Llama: grouped-query attention, RMSNorm, gated MLP, no biases
    "llama": dict(positional_embedding_type="rotary", rotary_dim=8, n_key_value_heads=2,
                  normalization_type="RMS", gated_mlp=True, act_fn="silu", final_rms=True, biases=False),
    # Qwen-2: as Llama but with q/k/v biases
    "qwen": dict(positional_embedding_type="rotary", rotary_dim=8, n_key_value_heads=2,
                 normalization_type="RMS", gated_mlp=True, act_fn="silu", final_rms=True),
    # Gemma-style: soft-capped attention scores and logits, a custom attention scale, alternating
    # local and global attention, RMSNorm, GQA down to one key/value head, gated GELU MLP
    "gemma": dict(positional_embedding_type="rotary", rotary_dim=8, n_key_value_heads=1,
                  normalization_type="RMS", gated_mlp=True, act_fn="gelu_pytorch_tanh", final_rms=True,
                  attn_scores_soft_cap=2.0, output_logits_soft_cap=3.0, attn_scale=3.0,
                  use_local_attn=True, attn_types=["local", "global"], window_size=3, rotary_adjacent_pairs=True, biases=False),
    # Gemma-2: the Gemma-style blocks plus a second RMSNorm on each attention and MLP output
    # (ln1_post, ln2_post) before the residual stream, with GQA down to two key/value heads.  Unlike
    # Gemma-2 it has biases, so that b_O, which sits inside the post-norm, is tested too.
    "gemma2": dict(positional_embedding_type="rotary", rotary_dim=8, n_key_value_heads=2,
                   normalization_type="RMS", gated_mlp=True, act_fn="gelu_pytorch_tanh", final_rms=True,
                   attn_scores_soft_cap=2.0, output_logits_soft_cap=3.0, use_local_attn=True,
                   attn_types=["local", "global"], window_size=3, use_normalization_before_and_after=True),
    # RMSPre (folded RMSNorm) in parallel blocks without MLP biases
    "rmspre-parallel": dict(positional_embedding_type="rotary", rotary_dim=4, normalization_type="RMSPre",
                            parallel_attn_mlp=True, n_key_value_heads=3),
}


def family_model(family: str, n_layers=2, n_heads=6, d_head=8, dtype=torch.float64, seed=0,
                 d_vocab=40, n_ctx=16, **overrides) -> HookedTransformer:
    """A random model of ``family``, n_layers x n_heads (GQA families share key/value heads)."""
    options = {**FAMILIES[family], **overrides}
    biases = options.pop("biases", True)
    if "attn_types" in options:  # alternate local and global layers, however many there are
        options["attn_types"] = [options["attn_types"][i % len(options["attn_types"])] for i in range(n_layers)]
    cfg = HookedTransformerConfig(
        n_layers=n_layers, n_heads=n_heads, d_model=n_heads * d_head // 2, d_head=d_head,
        d_mlp=2 * n_heads * d_head, d_vocab=d_vocab, n_ctx=n_ctx, act_fn=options.pop("act_fn", "gelu"),
        normalization_type=options.pop("normalization_type", "LN"), dtype=dtype, seed=seed, **options,
    )
    model = HookedTransformer(cfg)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1].lstrip("_")
            if leaf in ("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b", "b_U"):
                if biases:
                    param.copy_(0.1 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
            elif leaf == "w":
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return model.eval().requires_grad_(False)
