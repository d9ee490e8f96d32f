"""task=pairs: prompt pairs from a file, model=hf, and every bad input as one line before a model loads."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from circuitfind.models import loading
from circuitfind.models.loading import gpt2_tokenizer
from circuitfind.tasks.pairs_file import PairsFileError, read_pairs
from circuitfind.runs.pipeline import ConfigError, run
from circuitfind.tasks.pairs import encode_pairs

from conftest import config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ioi_pairs.csv"
SMALL = ("model.pretrained=false", "model.n_layers=2", "model.n_heads=2", "model.d_model=32")
HEADER = "clean,corrupted,answer,wrong_answer\n"


def write(tmp_path, text, name="pairs.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def cli(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "circuitfind.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


# ---- reading the file (no torch, no tokenizer) ------------------------------------------------
@pytest.mark.parametrize("text, metric, message", [
    ("", None, "holds no prompt pairs"),
    (HEADER, None, "holds no prompt pairs"),
    ("clean,answer\nA,B\n", None, "missing column 'corrupted' (columns: clean, answer)"),
    ("clean,corrupted\nA,B\n", "nll", "missing column 'answer' (or 'correct_idx'): metric=nll reads the correct"),
    ("clean,corrupted,answer\nA,B, x\n", "logit_diff", "missing column 'wrong_answer': metric=logit_diff compares"),
    ("clean,corrupted,correct_idx\nA,B,3\n", "prob_diff", "missing column 'incorrect_idx'"),
    (HEADER + "A,,x,y\n", None, "row 1: 'corrupted' is empty"),
    (HEADER + "A,B, x, y\nC,D,, y\n", "nll", "row 2: 'answer' is empty (metric=nll)"),
    ("clean,corrupted,correct_idx\nA,B,seven\n", None, "row 1: correct_idx must be an integer, got 'seven'"),
    ("clean,corrupted,correct_idx\nA,B,-4\n", None, "row 1: correct_idx '-4' is not a token id"),
    ("clean,corrupted,position\nA,B,last\n", None, "row 1: position must be an integer, got 'last'"),
    (HEADER + "A,B,x,y\n", "accuracy", "task pairs has no metric 'accuracy'; choose one of kl, nll"),
])
def test_bad_files_get_one_line(tmp_path, text, metric, message):
    with pytest.raises(PairsFileError, match=None) as error:
        read_pairs(write(tmp_path, text), metric)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_jsonl_and_missing_file(tmp_path):
    with pytest.raises(PairsFileError, match=r"line 2: not JSON"):
        read_pairs(write(tmp_path, '{"clean": "a", "corrupted": "b"}\n{oops\n', "p.jsonl"))
    with pytest.raises(PairsFileError, match="line 1: expected a JSON object per line"):
        read_pairs(write(tmp_path, '["a", "b"]\n', "q.jsonl"))
    with pytest.raises(PairsFileError, match="no such file"):
        read_pairs(tmp_path / "absent.csv")


def test_csv_and_jsonl_read_alike(tmp_path):
    csv_pairs = read_pairs(EXAMPLE, "logit_diff")
    import csv
    rows = list(csv.DictReader(open(EXAMPLE)))
    jsonl = write(tmp_path, "".join(json.dumps(r) + "\n" for r in rows), "pairs.jsonl")
    assert read_pairs(jsonl, "logit_diff") == csv_pairs
    assert read_pairs(write(tmp_path, json.dumps(rows, indent=1), "pairs.json"), "logit_diff") == csv_pairs
    assert len(csv_pairs) == 6 and csv_pairs[0].answer == " Mary" and csv_pairs[0].wrong_answer == " John"


# ---- tokenising ------------------------------------------------------------------------------
@pytest.mark.needs_gpt2_tokenizer
def test_answers_as_text_or_ids_give_the_same_task(tmp_path):
    tok = gpt2_tokenizer()
    text_pairs = read_pairs(EXAMPLE, "logit_diff")
    as_ids = "clean,corrupted,correct_idx,incorrect_idx\n" + "".join(
        f'"{p.clean}","{p.corrupted}",{tok.encode(p.answer)[0]},{tok.encode(p.wrong_answer)[0]}\n' for p in text_pairs)
    by_text, by_id = encode_pairs(tok, text_pairs), encode_pairs(tok, read_pairs(write(tmp_path, as_ids), "logit_diff"))
    for key in ("answer", "wrong_answer"):
        assert torch.equal(by_text.extras[key], by_id.extras[key])
    assert torch.equal(by_text.clean, by_id.clean) and (by_text.positions == by_text.clean.shape[1] - 1).all()


@pytest.mark.needs_gpt2_tokenizer
def test_left_padding_keeps_each_metric_on_its_prompts_token(tmp_path):
    tok = gpt2_tokenizer()
    path = write(tmp_path, "clean,corrupted,position\nThe cat sat,The dog sat down,\n"
                           "A much longer clean prompt here,Short,1\nOne two,Three four,-2\n")
    pairs = read_pairs(path)
    with pytest.raises(PairsFileError, match="row 1: the clean prompt is 3 tokens and the corrupted one 4; "
                                             "make them one length or set task.pad=true"):
        encode_pairs(tok, pairs)
    data = encode_pairs(tok, pairs, pad=True)
    length = data.clean.shape[1]
    assert data.corrupted.shape[1] == length == 6
    for pair, row, position, want in zip(pairs, data.clean, data.positions[:, 0], (-1, 1, -2)):
        own = tok.encode(pair.clean)
        assert row[position] == own[want]  # the token the file's position names, after padding
        assert row[: length - len(own)].eq(tok.eos_token_id).all() and row[length - len(own):].tolist() == own


@pytest.mark.needs_gpt2_tokenizer
def test_rows_of_different_lengths_and_long_answers_name_the_row(tmp_path):
    tok = gpt2_tokenizer()
    with pytest.raises(PairsFileError, match="row 2: its prompts are 2 tokens, row 1's 3"):
        encode_pairs(tok, read_pairs(write(tmp_path, "clean,corrupted\nThe cat sat,The dog sat\nA b,C d\n")))
    with pytest.raises(PairsFileError, match=r"row 1: answer ' Maryanne-Louise' is \d tokens; answers must be one token"):
        encode_pairs(tok, read_pairs(write(tmp_path, HEADER + "The cat,The dog, Maryanne-Louise, Bob\n")))
    with pytest.raises(PairsFileError, match="row 1: position 5 is outside the clean prompt"):
        encode_pairs(tok, read_pairs(write(tmp_path, "clean,corrupted,position\nThe cat,The dog,5\n")))


# ---- the pipeline: checks before any model loads ------------------------------------------------
@pytest.mark.needs_gpt2_tokenizer
def test_tokenizer_checks_come_before_the_model_loads(tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(loading, "load_model", no_model)
    path = write(tmp_path, HEADER + "The cat,The dog, Maryanne-Louise, Bob\n")
    with pytest.raises(PairsFileError, match="row 1: answer"):
        run(config("task=pairs", f"task.path={path}", *SMALL), tmp_path / "run")


@pytest.mark.parametrize("overrides, message", [
    ((), "task=pairs needs task.path="),
    (("task.path=/nonexistent/pairs.csv",), "no such file"),
    (("task.path=EXAMPLE", "metric=frac_correct"), "task pairs has no metric 'frac_correct'"),
])
def test_config_errors_before_loading(tmp_path, overrides, message):
    overrides = [o.replace("EXAMPLE", str(EXAMPLE)) for o in overrides]
    with pytest.raises(ConfigError, match=message):
        run(config("task=pairs", *overrides), tmp_path / "run")


@pytest.mark.parametrize("overrides, message", [
    (("model.name=no-such-model", "model.pretrained=false"), "model.name='no-such-model' is not a TransformerLens model name"),
    pytest.param(("model.n_layers=2",), "model.n_layers changes the architecture, which only random weights can do",
                 marks=pytest.mark.needs_gpt2_tokenizer),
    pytest.param(("model.name=pythia-410m", "model.pretrained=false"),
                 "the config of EleutherAI/pythia-410m is not in the Hugging Face cache",
                 marks=pytest.mark.needs_gpt2_tokenizer),
])
def test_hf_model_errors_are_one_line(tmp_path, overrides, message):
    with pytest.raises((ValueError, loading.ModelUnavailableError), match=message) as error:
        run(config("task=pairs", f"task.path={EXAMPLE}", *overrides), tmp_path / "run")
    assert "\n" not in str(error.value)


@pytest.mark.needs_gpt2_tokenizer
def test_hf_names_known_offline_build_the_same_model_as_their_own_config():
    from transformer_lens import HookedTransformerConfig  # noqa: F401

    tokenizer = gpt2_tokenizer()
    by_alias = loading.load_model(dict(kind="hf", name="attn-only-4l", pretrained=False, fold_ln=True),
                                  tokenizer=tokenizer)
    own = loading.load_model(dict(kind="hub", name="attn_only_4l", repo="NeelNanda/Attn_Only_4L512W_C4_Code",
                                  pretrained=False, fold_ln=True), tokenizer=tokenizer)
    assert by_alias.cfg.n_layers == own.cfg.n_layers == 4 and by_alias.cfg.normalization_type == "LNPre"
    assert all(torch.equal(a, b) for a, b in zip(by_alias.state_dict().values(), own.state_dict().values()))
    small = loading.load_model(dict(kind="hf", name="gpt2", pretrained=False, n_layers=2, n_heads=4, d_model=64),
                               tokenizer=tokenizer)
    cfg = small.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.d_vocab) == (2, 4, 64, 16, 256, 50257)


def test_cli_bad_input_is_one_line_and_exit_2_fast(tmp_path):
    empty = write(tmp_path, "")
    started = time.time()
    result = cli("task=pairs", f"task.path={empty}", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"circuitfind: error: task.path {empty} holds no prompt pairs"]
    assert time.time() - started < 120  # import time on a loaded 2-core machine; no model is built


# ---- whole runs ---------------------------------------------------------------------------------
@pytest.mark.needs_gpt2_tokenizer
@pytest.mark.parametrize("method, metric, extra", [
    ("acdc", "logit_diff", ("tau=0.0001",)),
    ("acdc", "kl", ("tau=0.0001", "task.pad=true")),
    ("sp", "prob_diff", ("method.epochs=20",)),
    ("hisp", "logit_diff", ()),
    ("hisp", "nll", ()),
])
def test_every_method_runs_on_the_example_offline(tmp_path, method, metric, extra):
    summary = run(config("task=pairs", f"task.path={EXAMPLE}", f"metric={metric}", f"method={method}",
                         *SMALL, *extra), tmp_path / "run")
    assert summary["task"] == "pairs" and summary["metric"] == metric and summary["method"] == method
    for name in ("edges.csv", "summary.json", "circuit.json", "circuit.dot", "circuit.png"):
        assert (tmp_path / "run" / name).is_file()
    # nothing removed is the model itself, so its logit difference is the model's
    assert summary["metric_full"] != summary["metric_empty"]


@pytest.mark.slow  # a subprocess (imports and a model); its in-process twin is the test above
@pytest.mark.needs_gpt2_tokenizer
def test_cli_runs_acdc_on_the_shipped_example(tmp_path):
    result = cli("task=pairs", f"task.path={EXAMPLE}", *SMALL, "tau=0.0001", "progress=false",
                 f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task"] == "pairs" and summary["n_edges_total"] > 0
    assert (tmp_path / "run" / "circuit.json").is_file()


@pytest.mark.needs_gpt2_tokenizer
def test_metric_full_is_the_full_circuits_metric_where_that_is_not_zero(tmp_path):
    """The logit difference of the model itself is not zero by construction (as KL or L2 against the
    clean logits would be): ``metric_full`` must be the full circuit's, computed by a patched forward
    with nothing removed, on each split."""
    from circuitfind.runs.pipeline import build_problem

    cfg = config("task=pairs", f"task.path={EXAMPLE}", "metric=logit_diff", "method=acdc",
                 "method.max_edge_tests=1", *SMALL)
    summary = run(cfg, tmp_path)
    problem = build_problem(cfg)
    for split, numbers in (("validation", summary), ("test", summary["test"])):
        full = problem.evaluate(problem.graph.full_mask(), split)
        assert abs(full) > 1e-3, split
        assert numbers["metric_full"] == pytest.approx(full, rel=1e-6, abs=1e-9), split
