"""Float64 throughout for TransformerLens 4 bridges whose code rounds to float32 in any dtype.

Hugging Face's Llama, Qwen2 and Gemma-2 RMS norms (and TransformerLens' native RMSNorm and RMSPre)
cast their input to float32 (``x.to(float32)``, ``x.float()``) whatever the weights' dtype, and TransformerLens 4.3's attention bridge for
rotary models (``PositionEmbeddingsAttentionBridge``) takes the softmax with ``dtype=float32``, as
Hugging Face's eager attention does.  For half-precision weights that is an upcast; for float64
weights it rounds every norm and every attention pattern to float32, so a float64 model agrees with
itself only to about 1e-7 and a finite difference of its logits over 1e-6 is mostly rounding.

``compute_in_float64(bridge)`` changes that for float64 inputs only: the norms compute Hugging
Face's formula in the input's dtype, and the attention softmax in the scores' dtype when that is
wider than float32.  Float32, bfloat16 and float16 inputs take the modules' own code, unchanged.
The model view reads ``softmax_dtype_follows_scores`` off an attention bridge to take its own
softmax where the bridge does.
"""

from __future__ import annotations

from types import MethodType

import torch

# RMS norms that round to float32, and how each scales: by its weight, by (1 + weight), or not at
# all (TransformerLens' native RMSPre)
RMS_NORMS = {"LlamaRMSNorm": "weight", "Qwen2RMSNorm": "weight", "Gemma2RMSNorm": "1 + weight",
             "NativeRMSNorm": "weight", "NativeRMSNormPre": None}
MARK = "softmax_dtype_follows_scores"


def compute_in_float64(bridge) -> int:
    """Makes ``bridge``'s RMS norms and rotary attention keep float64 inputs in float64 (see the
    module docstring); returns how many modules it changed.  Applying it twice changes nothing more.
    The changed methods are bound to their modules, so a deep copy of the bridge keeps them, bound
    to the copy's modules."""
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge)

    changed = 0
    for module in bridge.modules():
        if isinstance(module, PositionEmbeddingsAttentionBridge) and not getattr(module, MARK, False):
            module._masked_softmax = MethodType(_softmax_keeping_float64, module)
            setattr(module, MARK, True)
            changed += 1
        if type(module).__name__ in RMS_NORMS and not getattr(module, "keeps_float64", False):
            module.forward = MethodType(_rms_norm_keeping_float64, module)
            module.keeps_float64 = True
            changed += 1
    return changed


def _softmax_keeping_float64(self, scores: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    if dtype is not None and scores.dtype == torch.float64:
        dtype = torch.float64
    return type(self)._masked_softmax(self, scores, dtype=dtype)


def _rms_norm_keeping_float64(self, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float64:
        return type(self).forward(self, x)
    eps = getattr(self, "variance_epsilon", None)
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + float(self.eps if eps is None else eps))
    scale = RMS_NORMS[type(self).__name__]
    if scale is None:
        return normed
    return normed * (1 + self.weight) if scale == "1 + weight" else self.weight * normed
