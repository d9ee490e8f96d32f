"""The TransformerLens 3.x backend: a ``HookedTransformer`` is its own model view (see ``__init__``)."""

from __future__ import annotations


def is_hooked_transformer(model) -> bool:
    from transformer_lens import HookedTransformer

    return isinstance(model, HookedTransformer)


def hooked_transformer(cfg, move_to_device: bool = True):
    """``HookedTransformer(cfg)``: the loaders build models here, not by importing TransformerLens."""
    from transformer_lens import HookedTransformer

    return HookedTransformer(cfg, move_to_device=move_to_device)


def config(**fields):
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(**fields)


def config_fields() -> dict:
    """HookedTransformerConfig's dataclass fields (the loaders keep only those it accepts)."""
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig.__dataclass_fields__


def from_pretrained(repo: str, **kwargs):
    from transformer_lens import HookedTransformer

    return HookedTransformer.from_pretrained(repo, **kwargs)


def loading_from_pretrained():
    """TransformerLens 3's ``loading_from_pretrained`` module (config conversion, state dicts, names)."""
    from transformer_lens import loading_from_pretrained as tl_loading

    return tl_loading


def post_norm_architectures() -> tuple[str, ...]:
    """Architectures whose blocks TransformerLens 3 normalises after the sublayers (refused by the engine)."""
    from transformer_lens.components import transformer_block

    return tuple(getattr(transformer_block, "POST_NORM_ARCHITECTURES", ()))
