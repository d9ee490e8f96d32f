"""The model view under TransformerLens 3 (the default install): a HookedTransformer is its own view,
the engine knows TransformerLens 3's norms and post-norm architectures without importing it, no
module outside the backends imports TransformerLens, and ``--version`` names the backend."""

import pathlib
import re

import pytest

from circuitfind.clihelp import version_text
from circuitfind.core.architecture import POST_NORM_ARCHITECTURES
from circuitfind.engine.model_reads import norm_kind
from circuitfind.models.view import backend, model_view, tl3

from conftest import tiny_model

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "circuitfind"

pytestmark = pytest.mark.skipif(backend() != "tl3", reason="TransformerLens 3's backend")


def test_a_hooked_transformer_is_its_own_view():
    model = tiny_model()
    assert model_view(model) is model
    with pytest.raises(TypeError, match="HookedTransformer"):
        model_view(object())


@pytest.mark.parametrize("normalization_type, kind", [("LN", "LayerNorm"), ("LNPre", "LayerNormPre"),
                                                      ("RMS", "RMSNorm"), ("RMSPre", "RMSNormPre"), (None, None)])
def test_the_engine_knows_transformer_lens_3s_norms_by_name(normalization_type, kind):
    model = tiny_model(normalization_type=normalization_type)
    assert norm_kind(model.blocks[0].ln1) == kind


def test_the_post_norm_architectures_are_transformer_lens_3s():
    assert set(POST_NORM_ARCHITECTURES) == set(tl3.post_norm_architectures())


def test_only_the_backends_import_transformer_lens():
    importing = re.compile(r"^\s*(from transformer_lens\b|import transformer_lens\b)", re.M)
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if importing.search(p.read_text()) and p.parent.name != "view"]
    assert offenders == []


def test_version_names_the_backend():
    assert "model backend: transformer-lens 3.9.0 (HookedTransformer backend)" in version_text()
