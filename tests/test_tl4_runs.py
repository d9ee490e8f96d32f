"""Runs under TransformerLens 4 (``make test-tl4``): the induction task on random Hugging Face models of
GPT-2's, Llama's and Qwen's shapes behind a TransformerBridge (``model=hf ... model.pretrained=false``,
built offline), with EAP and with ACDC, and of Gemma-2's and Pythia's with EAP; the default runs on the
shipped weights (in a native bridge); the README's Python API on a bridge; and the one line a model
without a TransformerLens 4 path stops with."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from circuitfind.models.view import backend

if backend() != "tl4":
    pytest.skip("TransformerLens 4 is not installed (make test-tl4)", allow_module_level=True)

from circuitfind.runs.pipeline import run  # noqa: E402

from conftest import config  # noqa: E402

SHAPES = {  # model.name and a small size of it (Llama keeps 8 key/value heads: 16 query heads share them)
    "gpt2": ["model.name=gpt2", "model.n_heads=4", "model.d_model=32"],
    "llama": ["model.name=llama-3.2-1b", "model.n_heads=16", "model.d_model=128"],
    "qwen": ["model.name=qwen2.5-0.5b", "model.n_heads=4", "model.d_model=32"],
}
SMALL_INDUCTION = ["task=induction", "model=hf", "model.pretrained=false", "model.n_layers=2", "task.n_prompts=4",
                   "task.seq_len=16", "task.span_len=4", "draw=false"]


# the other two families the configs ship, with EAP (Pythia's heads shrink to 8 dimensions: it
# rotates a quarter of them, 2)
MORE_SHAPES = {
    "gemma2": ["model.name=gemma-2-2b", "model.n_heads=8", "model.d_model=64"],
    "pythia": ["model.name=pythia-70m", "model.n_heads=4", "model.d_model=32"],
}


@pytest.mark.needs_gpt2_tokenizer
@pytest.mark.parametrize("shape, method", [
    *[(shape, method) for shape in SHAPES for method in (["method=eap"], ["method=acdc", "method.max_edge_tests=50"])],
    *[(shape, ["method=eap"]) for shape in MORE_SHAPES]])
def test_induction_runs_on_a_bridge(tmp_path, shape, method):
    summary = run(config(*SMALL_INDUCTION, *{**SHAPES, **MORE_SHAPES}[shape], *method), tmp_path)
    assert summary["task"] == "induction" and summary["n_edges_total"] > 0
    assert json.loads((tmp_path / "summary.json").read_text())["n_edges_total"] == summary["n_edges_total"]
    assert (tmp_path / "edges.csv").is_file()


def test_the_default_runs_take_the_shipped_weights_through_a_native_bridge(tmp_path):
    """``circuitfind`` (ACDC on tracr-reverse) finds the program's circuit exactly, as under 3.9, and
    ``circuitfind method=eap task=induction`` runs on induction_2l."""
    default = run(config("draw=false"), tmp_path / "default")
    assert (default["model"], default["n_edges_kept"], default["n_edges_total"]) == ("tracr_reverse", 15, 106)
    assert default["edge_tpr"] == 1.0 and default["edge_fpr"] == 0.0
    induction = run(config("method=eap", "task=induction", "draw=false"), tmp_path / "induction")
    assert induction["model"] == "induction_2l" and 0 < induction["n_edges_kept"] < induction["n_edges_total"] == 305


@pytest.mark.needs_gpt2_tokenizer
def test_a_model_without_a_transformer_lens_4_path_is_refused_with_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "circuitfind.cli", "task=induction", "model=redwood_attn_2l",
                             "model.pretrained=false", "method=eap", "progress=false", f"hydra.run.dir={tmp_path}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no Hugging Face architecture" in lines[0], result.stderr


@pytest.mark.needs_gpt2_tokenizer
def test_the_readme_python_api_example_runs_with_a_bridge(tmp_path, monkeypatch, capsys):
    """The README's bridge lines, then its Python example from ``generator = ...`` on, as written."""
    from test_api import README, readme_python_example

    text = README.read_text()
    bridge = re.search(r"```python\n(.*?)```", text[text.index("**With TransformerLens 4**"):], re.S)[1]
    example = readme_python_example()
    rest = example[example.index("generator = "):]
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    exec(compile(bridge, "README.md", "exec"), namespace)
    assert type(namespace["model"]).__name__ == "TransformerBridge"
    exec(compile(rest, "README.md", "exec"), namespace)
    summary = json.loads((tmp_path / "outputs" / "my_run" / "summary.json").read_text())
    assert summary["method"] == "acdc" and summary["metric"] == "logit_diff"
    printed = capsys.readouterr().out.splitlines()
    assert f"{summary['n_edges_kept']} of {summary['n_edges_total']} edges kept" == printed[0]


@pytest.mark.needs_gpt2_tokenizer
def test_real_weights_load_through_the_bridge_from_a_saved_folder(tmp_path):
    """``model=hf model.name=<folder>`` (a model saved with save_pretrained) takes the loader's path for
    real weights, ``boot_transformers``, offline: the view's logits are those of the saved weights."""
    import transformers

    from circuitfind.models.loading import gpt2_tokenizer, load_model
    from circuitfind.models.view import tl4

    from bridge_families import FAMILIES

    torch.manual_seed(3)
    hf_model = transformers.LlamaForCausalLM(tl4.hf_config(FAMILIES["llama"]))
    folder = tmp_path / "llama"
    hf_model.save_pretrained(folder)  # before a bridge wraps its modules
    gpt2_tokenizer().save_pretrained(folder)
    saved = tl4.bridge_view(hf_model, "meta-llama/Llama-3.2-1B")
    model = load_model({"kind": "hf", "name": str(folder), "pretrained": True}, seed=0)
    assert type(model.hf).__name__ == "LlamaForCausalLM" and model.cfg.rotary_base == 5e4
    tokens = torch.randint(0, 40, (2, 7))
    torch.testing.assert_close(model(tokens), saved(tokens), rtol=0, atol=0)
    assert transformers.AutoConfig.from_pretrained(folder).rope_parameters["rope_theta"] == 5e4
