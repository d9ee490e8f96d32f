"""One model view: what the patching engine, the hook reference and the loaders read of a causal LM.

The engine reads a model through a small surface, the one TransformerLens 3's ``HookedTransformer``
offers: ``cfg`` (sizes and flags in TransformerLens 3's names), ``embed``/``pos_embed``, per block
``ln1``/``ln2`` (and Gemma-2's ``ln1_post``/``ln2_post``), ``attn`` (``W_Q``, ``W_K``, ``W_V``,
``W_O`` and biases, ``_W_K``/``_W_V`` under grouped-query attention, ``apply_rotary``,
``calculate_attention_scores``, ``apply_causal_mask``, ``calculate_z_scores``) and ``mlp``, then
``ln_final`` and ``unembed``; the hook reference reads its hooks by TransformerLens 3's names
(``run_with_hooks``, ``run_with_cache``, ``hooks``, ``hook_dict``, ``set_use_*``).

Two backends present it:

``tl3``  TransformerLens 3.x: the ``HookedTransformer`` itself is its view (today's maths, bit for bit).
``tl4``  TransformerLens 4.x: a ``TransformerBridge`` over a Hugging Face model, wrapped in
         ``tl4.BridgeView``, which reads the weights from the bridge, runs the Hugging Face norms,
         MLPs and rotary embedding, and translates TransformerLens 3's hook names to the bridge's.

Which backend is active follows the installed TransformerLens (``backend()``); each backend
imports TransformerLens only inside itself.  Nothing here imports a backend at import time.
"""

from __future__ import annotations

from importlib import metadata


def transformer_lens_version() -> str | None:
    """The installed TransformerLens release, or None."""
    try:
        return metadata.version("transformer-lens")
    except metadata.PackageNotFoundError:
        return None


def backend() -> str:
    """``tl3`` or ``tl4``: the backend the installed TransformerLens calls for."""
    version = transformer_lens_version()
    if version is None:
        raise ImportError("TransformerLens is not installed: pip install 'circuitfind[tl3]' (or [tl4])")
    return "tl4" if int(version.split(".")[0]) >= 4 else "tl3"


def describe() -> str:
    """One line: the active backend and its TransformerLens release (``circuitfind --version``)."""
    version = transformer_lens_version()
    if version is None:
        return "no TransformerLens installed"
    kind = "TransformerBridge" if backend() == "tl4" else "HookedTransformer"
    return f"transformer-lens {version} ({kind} backend)"


def model_view(model):
    """The view of ``model``: a ``HookedTransformer`` (3.x) is its own; a ``TransformerBridge`` (4.x) is
    wrapped; a view is returned as it is."""
    if getattr(model, "is_model_view", False):
        return model
    if backend() == "tl4":
        from . import tl4

        if tl4.is_bridge(model):
            from . import native

            return native.NativeView(model) if native.is_native(model) else tl4.BridgeView(model)
        raise TypeError(f"expected a TransformerLens 4 TransformerBridge, got {type(model).__name__}")
    from . import tl3

    if tl3.is_hooked_transformer(model):
        return model
    raise TypeError(f"expected a TransformerLens HookedTransformer, got {type(model).__name__}")
