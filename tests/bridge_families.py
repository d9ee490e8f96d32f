"""Tiny random Hugging Face models of today's families behind a TransformerLens 4 TransformerBridge
(the ``tl4`` model view), each built offline from circuitfind's architecture fields
(``tl4.hf_config``).  Norm weights and biases are perturbed (Hugging Face starts them at 1 or 0,
which would hide mistakes), and the rotary models use a non-default ``rope_theta``."""

import torch

from circuitfind.models.view import tl4
from conftest import require_gpt2_tokenizer

SMALL = dict(n_layers=2, n_heads=4, d_model=32, d_head=8, d_mlp=64, d_vocab=40, n_ctx=16)
FAMILIES: dict[str, dict] = {
    # GPT-2: learned positions, LayerNorm, fused q/k/v
    "gpt2": dict(SMALL, original_architecture="GPT2LMHeadModel", act_fn="gelu_new",
                 positional_embedding_type="standard"),
    # Pythia / GPT-NeoX: partial rotary, parallel attention and MLP
    "pythia": dict(SMALL, original_architecture="GPTNeoXForCausalLM", rotary_dim=4, parallel_attn_mlp=True,
                   positional_embedding_type="rotary", rotary_base=5e4),
    # Llama: grouped-query attention, RMSNorm, gated MLP, no biases, rope_theta 5e4
    "llama": dict(SMALL, original_architecture="LlamaForCausalLM", n_heads=6, d_model=24, n_key_value_heads=2,
                  positional_embedding_type="rotary", rotary_base=5e4),
    # Llama-3's rope scaling (NTK by parts), as Llama-3.2 has it
    "llama3-rope": dict(SMALL, original_architecture="LlamaForCausalLM", n_key_value_heads=2,
                        positional_embedding_type="rotary", rotary_base=5e5, use_NTK_by_parts_rope=True,
                        NTK_by_parts_factor=32.0, NTK_by_parts_low_freq_factor=1.0,
                        NTK_by_parts_high_freq_factor=4.0, NTK_original_ctx_len=8),
    # Qwen2: as Llama with q/k/v biases
    "qwen": dict(SMALL, original_architecture="Qwen2ForCausalLM", n_heads=6, d_model=24, n_key_value_heads=2,
                 positional_embedding_type="rotary", rotary_base=2e4),
    # Gemma-2: post-norms, soft-capped scores and logits, alternating local (window 3) and global layers
    "gemma2": dict(SMALL, original_architecture="Gemma2ForCausalLM", n_key_value_heads=2,
                   positional_embedding_type="rotary", attn_types=["local", "global"], window_size=3,
                   attn_scores_soft_cap=2.0, output_logits_soft_cap=3.0),
}


def bridge_model(family: str, dtype=torch.float64, seed=0, **overrides) -> tl4.BridgeView:
    require_gpt2_tokenizer()  # a bridge over a Hugging Face model needs its tokenizer, GPT-2's here
    view = tl4.random_bridge({**FAMILIES[family], **overrides}, seed, dtype=dtype)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in view.bridge.original_model.named_parameters():
            if name.endswith("bias") or "norm" in name or ".ln_" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return tl4.BridgeView(view.bridge)  # re-read the perturbed weights
