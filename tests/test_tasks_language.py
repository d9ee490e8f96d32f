"""IOI, Greater-Than and Docstring: prompts written in GPT-2's real tokenizer, their corruptions and
metrics, and each task's pipeline end to end on a random-weight model of the paper's architecture."""

import random
import re

import pytest
import torch

from circuitfind.models.loading import gpt2_tokenizer
from circuitfind.runs.pipeline import run
from circuitfind.tasks import build_task
from circuitfind.tasks import docstring as docstring_module
from circuitfind.tasks import greaterthan as greaterthan_module
from circuitfind.tasks import ioi as ioi_module
from circuitfind.tasks.base import TaskData
from circuitfind.tasks.text import encode_prompts

from conftest import config, require_gpt2_tokenizer

GPT2 = dict(name="gpt2", kind="hub", repo="gpt2", tokenizer="gpt2", pretrained=False, fold_ln=True,
            center_writing_weights=True, center_unembed=True)
ATTN_ONLY_4L = dict(name="attn_only_4l", kind="hub", repo="NeelNanda/Attn_Only_4L512W_C4_Code",
                    tokenizer="NeelNanda/gpt-neox-tokenizer-digits", pretrained=False, fold_ln=True,
                    center_writing_weights=True, center_unembed=True)


@pytest.fixture(scope="module")
def tokenizer():
    require_gpt2_tokenizer()
    return gpt2_tokenizer()


def words(tokenizer, ids: torch.Tensor) -> list[str]:
    return [tokenizer.decode([i]) for i in ids.tolist()]


# ---- IOI -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ioi(tokenizer):
    return build_task("ioi", seed=0, model=GPT2, n_prompts=20)


def test_ioi_word_lists_are_single_gpt2_tokens(tokenizer):
    for word in ioi_module.NAMES + ioi_module.PLACES + ioi_module.OBJECTS:
        assert len(tokenizer.encode(" " + word)) == 1, word
    assert len(set(ioi_module.NAMES)) == len(ioi_module.NAMES) >= 100


def test_ioi_prompts_and_their_abc_corruption(ioi, tokenizer):
    data = ioi.validation
    assert data.clean.shape == data.corrupted.shape == (20, 15)
    assert (data.positions == 14).all()
    for row in range(20):
        clean = tokenizer.decode(data.clean[row])
        io, s = tokenizer.decode([int(data.extras["io"][row])]), tokenizer.decode([int(data.extras["s"][row])])
        match = re.fullmatch(r"Then, (\w+) and (\w+) went to the (\w+)\. (\w+) gave a (\w+) to", clean)
        assert match and (" " + match[1], " " + match[2], " " + match[4]) == (io, s, s)
        corrupted = re.fullmatch(r"Then, (\w+) and (\w+) went to the (\w+)\. (\w+) gave a (\w+) to",
                                 tokenizer.decode(data.corrupted[row]))
        names = {corrupted[1], corrupted[2], corrupted[4]}
        assert len(names) == 3 and not names & {match[1], match[2]}  # three fresh names
        assert (corrupted[3], corrupted[5]) == (match[3], match[5])  # same place and object


def test_ioi_splits_are_disjoint_and_seeded(tokenizer):
    prompts = ioi_module.ioi_prompts(200, random.Random(5))
    assert len({(p["io"], p["s"], p["place"], p["object"]) for p in prompts}) == 200
    assert prompts == ioi_module.ioi_prompts(200, random.Random(5))
    assert prompts != ioi_module.ioi_prompts(200, random.Random(6))


def test_ioi_validation_and_test_differ(ioi):
    validation = {tuple(r) for r in ioi.validation.clean.tolist()}
    assert not validation & {tuple(r) for r in ioi.test.clean.tolist()}


def test_ioi_metrics_read_the_answer_and_the_subject():
    vocab = 10
    data = TaskData(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long),
                    torch.tensor([[2], [2]]), dict(io=torch.tensor([1, 4]), s=torch.tensor([2, 5])))
    logits = torch.zeros(2, 1, vocab)
    logits[0, 0, 1], logits[0, 0, 2] = 3.0, 1.0  # prompt 0: IO ahead by 2
    logits[1, 0, 4], logits[1, 0, 5] = 0.0, 0.5  # prompt 1: S ahead by 0.5
    m = ioi_module.METRICS
    assert torch.allclose(m["logit_diff"].per_prompt(logits, logits, data), torch.tensor([2.0, -0.5]))
    assert m["frac_correct"].per_prompt(logits, logits, data).tolist() == [1.0, 0.0]
    expected_nll = -torch.log_softmax(logits[:, 0], -1)[[0, 1], [1, 4]]
    assert torch.allclose(m["nll"].per_prompt(logits, logits, data), expected_nll)
    assert m["logit_diff"].loss(logits, logits, data) == pytest.approx(-0.75)  # higher is better: ACDC minimises minus


def test_prompts_of_different_token_lengths_are_refused(tokenizer):
    assert encode_prompts(tokenizer, ["a cat", "a dog"], bos=True)[:, 0].tolist() == [tokenizer.bos_token_id] * 2
    with pytest.raises(ValueError, match=r"prompts encode to different lengths \[2, 4\]"):
        encode_prompts(tokenizer, ["a cat", "a hippopotamus"])


# ---- Greater-Than --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def greaterthan(tokenizer):
    return build_task("greaterthan", seed=0, model=GPT2, n_prompts=20)


def test_greaterthan_years_split_into_century_and_two_digits(tokenizer):
    years = greaterthan_module.candidate_years(tokenizer)
    assert len(years) > 500
    for year in years:
        assert tokenizer.encode(f" {year}") == tokenizer.encode(f" {year[:2]}") + tokenizer.encode(year[2:])
    for century in greaterthan_module.CENTURIES:  # the first and the last such year of each century are left out
        splitting = [y for y in range(century * 100 + 2, century * 100 + 99)
                     if tokenizer.encode(f" {y}") == tokenizer.encode(f" {century}") + tokenizer.encode(f"{y % 100:02d}")]
        kept = [int(y) for y in years if y.startswith(str(century))]
        assert kept == splitting[1:-1]
    nouns = greaterthan_module.NOUNS
    assert len(set(nouns)) == len(nouns) >= 100 and all(len(tokenizer.encode(" " + n)) == 1 for n in nouns)


def test_greaterthan_prompts_and_corruption(greaterthan, tokenizer):
    data = greaterthan.validation
    assert data.clean.shape == data.corrupted.shape == (20, 10)
    for row in range(20):
        clean = tokenizer.decode(data.clean[row])
        match = re.fullmatch(r"The (\w+) lasted from the year (\d\d)(\d\d) to (\d\d)", clean)
        assert match and match[2] == match[4] and int(match[3]) == int(data.extras["yy"][row])
        corrupted = clean.replace(f"year {match[2]}{match[3]}", f"year {match[2]}01")
        assert tokenizer.decode(data.corrupted[row]) == corrupted
    differs = data.clean != data.corrupted
    assert differs[:, 7].all() and not differs[:, :7].any() and not differs[:, 8:].any()


def test_greaterthan_probability_difference():
    year_ids = torch.arange(100) + 10  # two-digit token of year end y: id 10 + y
    data = TaskData(torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long),
                    torch.tensor([[1]] * 3), dict(yy=torch.tensor([32, 32, 50]), year_ids=year_ids.expand(3, -1)))
    logits = torch.full((3, 1, 110), -1e9)
    logits[0, 0, 10 + 33] = 0  # all mass on a later year
    logits[1, 0, 10 + 32] = 0  # all mass on the same year: not later
    logits[2, 0, 10 + 60] = logits[2, 0, 10 + 10] = logits[2, 0, 5] = 0  # 1/3 later, 1/3 earlier, 1/3 no year
    got = greaterthan_module.METRICS["prob_diff"].per_prompt(logits, logits, data)
    assert torch.allclose(got, torch.tensor([1.0, -1.0, 0.0]), atol=1e-6)


# ---- Docstring -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def docstring(tokenizer):
    return build_task("docstring", seed=0, model=ATTN_ONLY_4L, n_prompts=20)


PROMPT = re.compile(r'def (\w+)\(self, (\w+), (\w+), (\w+)\):\n    """\w+ the \w+ \w+\n\n'
                    r"    :param (\w+): \w+ \w+\n    :param (\w+): \w+ \w+\n    :param")


def test_docstring_prompts_and_their_corruption(docstring, tokenizer):
    data = docstring.validation
    assert data.clean.shape == data.corrupted.shape and data.clean.shape[0] == 20
    assert (data.clean[:, 0] == tokenizer.bos_token_id).all()
    for row in range(20):
        clean = PROMPT.fullmatch(tokenizer.decode(data.clean[row, 1:]))
        assert clean and (clean[5], clean[6]) == (clean[2], clean[3])  # documents the first two, in order
        assert tokenizer.decode([int(data.extras["answer"][row])]) == " " + clean[4]
        assert sorted(words(tokenizer, data.extras["wrong"][row])) == sorted([" " + clean[2], " " + clean[3]])
        corrupted = PROMPT.fullmatch(tokenizer.decode(data.corrupted[row, 1:]))
        assert corrupted and corrupted[1] == clean[1]  # the method's name and the descriptions stay
        fresh = {corrupted[i] for i in (2, 3, 4, 5, 6)}
        assert len(fresh) == 5 and not fresh & {clean[i] for i in (1, 2, 3, 4)}


def test_docstring_metric_is_the_answer_minus_the_best_wrong_logit():
    data = TaskData(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long), torch.tensor([[1]]),
                    dict(answer=torch.tensor([3]), wrong=torch.tensor([[1, 2]])))
    logits = torch.tensor([[[0.0, 1.0, 2.5, 4.0, 9.0]]])
    assert docstring_module.METRICS["logit_diff"].per_prompt(logits, logits, data).item() == pytest.approx(1.5)


def test_docstring_on_random_attn_only_4l_reads_gpt2_tokens_offline(docstring):
    # attn-only-4l's own tokenizer is not cached here: the random stand-in's vocabulary fits GPT-2's ids
    assert docstring.model.cfg.d_vocab >= int(docstring.validation.clean.max()) + 1
    assert docstring.ground_truth_edges is not None


@pytest.mark.parametrize("task, value", [("ioi", 0), ("greaterthan", "many"), ("docstring", True), ("induction", 1)])
def test_bad_prompt_counts_are_refused_before_any_model_is_loaded(task, value):
    with pytest.raises(ValueError, match=f"n_prompts must be an integer of at least \\d, got {value!r}"):
        build_task(task, seed=0, model={"name": "never-loaded"}, n_prompts=value)


def test_a_task_refuses_a_model_without_a_tokenizer():
    with pytest.raises(ValueError, match="task ioi needs a language model .* not model=tracr_reverse"):
        build_task("ioi", seed=0, model={"name": "tracr_reverse", "kind": "tracr"})


# ---- the pipeline, as `circuitfind task=NAME method=canonical model.pretrained=false` runs it ------
@pytest.mark.parametrize("task, n_total, n_kept", [
    ("ioi", 32_923, 1_041), ("greaterthan", 32_923, 262), ("docstring", 1_377, 37)])
def test_canonical_circuit_runs_on_a_random_weight_model(task, n_total, n_kept, tokenizer, tmp_path):
    summary = run(config(f"task={task}", "method=canonical", "model.pretrained=false", "task.n_prompts=2"), tmp_path)
    assert (summary["task"], summary["n_edges_total"], summary["n_edges_kept"]) == (task, n_total, n_kept)
    assert (summary["edge_tpr"], summary["edge_fpr"]) == (1.0, 0.0)
    assert summary["metric_full"] == pytest.approx(0.0, abs=1e-5)  # KL of the full model against itself
    assert "random weights" in summary["model"]


@pytest.mark.slow  # a random GPT-2 and 100 prompts; quick twin: the canonical circuit on random weights above
def test_acdc_runs_on_ioi_with_a_capped_number_of_edge_tests(tokenizer, tmp_path):
    # Random weights barely use any edge (KL of the empty circuit < 0.1), so at tau 0.1 each tested
    # edge is removed; the cap stops the search after 20, before any receiver loses all its inputs.
    summary = run(config("task=ioi", "model.pretrained=false", "tau=0.1", "task.n_prompts=2",
                         "method.max_edge_tests=20"), tmp_path)
    assert summary["n_edge_tests"] == 20 and summary["n_edges_total"] == 32_923
    assert summary["n_edges_kept"] == 32_923 - 20
