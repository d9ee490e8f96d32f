"""The shipped tracr models compute their RASP programs (no jax needed).

scripts/compile_tracr.py checks the conversion against tracr itself; these tests
guard the shipped files and the loader against drifting from that.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from circuitfind.models.tracr import (
    TRACR_PROGRAMS,
    TracrModel,
    load_tracr_model,
    tracr_weights_path,
)


@pytest.fixture(scope="module")
def reverse() -> TracrModel:
    return load_tracr_model("tracr_reverse")


@pytest.fixture(scope="module")
def proportion() -> TracrModel:
    return load_tracr_model("tracr_proportion")


def run(tracr_model: TracrModel, rows: list[tuple[str, ...]]) -> list[list[str | float]]:
    return tracr_model.decode(tracr_model.model(tracr_model.encode(rows)))


def test_reverse_reverses_every_permutation(reverse: TracrModel) -> None:
    # The ACDC paper's data set: BOS followed by a permutation of (1, 2, 3).
    rows = list(itertools.permutations(("1", "2", "3")))
    assert run(reverse, rows) == [list(reversed(row)) for row in rows]


def test_reverse_other_lengths(reverse: TracrModel) -> None:
    # length is computed in-model (selector width), so shorter and longer rows work too.
    for length in (1, 2, 5):
        rows = [tuple(random.Random(length * 100 + i).choices("123", k=length)) for i in range(10)]
        assert run(reverse, rows) == [list(reversed(row)) for row in rows]


def test_proportion_is_running_fraction_of_x(proportion: TracrModel) -> None:
    rng = random.Random(0)
    rows = [tuple(rng.choices("wxyz", k=4)) for _ in range(50)]
    for row, got in zip(rows, run(proportion, rows), strict=True):
        expected = [row[: i + 1].count("x") / (i + 1) for i in range(len(row))]
        assert got == pytest.approx(expected, abs=1e-3), row


@pytest.mark.parametrize(
    ("name", "n_layers", "d_vocab_out"),
    [("tracr_reverse", 4, 3), ("tracr_proportion", 2, 1)],
)
def test_architecture(name: str, n_layers: int, d_vocab_out: int) -> None:
    tracr_model = load_tracr_model(name)
    cfg = tracr_model.model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_vocab_out) == (n_layers, 1, d_vocab_out)
    assert cfg.normalization_type is None
    assert cfg.attention_dir == "bidirectional"
    assert cfg.act_fn == "relu"
    assert not cfg.default_prepend_bos
    assert cfg.n_ctx == tracr_model.max_seq_len + 1 == 6
    assert not tracr_model.model.training
    assert not any(p.requires_grad for p in tracr_model.model.parameters())


def test_vocabularies(reverse: TracrModel, proportion: TracrModel) -> None:
    assert set(reverse.input_vocab) == {"1", "2", "3", reverse.bos, reverse.pad}
    assert reverse.output_vocab == ("1", "2", "3")
    assert set(proportion.input_vocab) == {"w", "x", "y", "z", proportion.bos, proportion.pad}
    assert proportion.output_vocab is None
    assert reverse.bos == proportion.bos == "BOS"


def test_encode(reverse: TracrModel) -> None:
    ids = reverse.encode([("3", "1", "2"), "123"])
    assert ids.dtype == torch.long and ids.shape == (2, 4)
    bos_id = reverse.input_vocab.index("BOS")
    assert ids[:, 0].tolist() == [bos_id, bos_id]
    assert [reverse.input_vocab[i] for i in ids[0, 1:].tolist()] == ["3", "1", "2"]


@pytest.mark.parametrize(
    "rows",
    [
        [("1", "4", "2")],  # unknown token
        [(1, 2, 3)],  # ints are not the vocabulary's strings
        [("BOS", "1", "2")],  # BOS is prepended by encode
        [("1", "compiler_pad")],  # tracr models do not mask pad
        [("1", "2"), ("1", "2", "3")],  # unequal lengths
        [("1",) * 6],  # longer than max_seq_len
        [],
    ],
)
def test_encode_rejects(reverse: TracrModel, rows: list) -> None:
    with pytest.raises(ValueError):
        reverse.encode(rows)


def test_decode_rejects_wrong_width(reverse: TracrModel) -> None:
    with pytest.raises(ValueError, match="shape"):
        reverse.decode(torch.zeros(1, 4, 1))


def test_float64(reverse: TracrModel) -> None:
    model64 = load_tracr_model("tracr_reverse", dtype=torch.float64)
    assert model64.model.W_E.dtype == torch.float64
    ids = reverse.encode([("1", "2", "3")])
    torch.testing.assert_close(model64.model(ids).float(), reverse.model(ids), atol=1e-4, rtol=0)


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="tracr_reverse"):
        load_tracr_model("tracr_nonesuch")


def test_weights_are_shipped_as_plain_files() -> None:
    for name in TRACR_PROGRAMS:
        path = tracr_weights_path(name)
        assert path.is_file() and path.parent.name == "weights"
        data = torch.load(path, weights_only=True)
        assert data["format_version"] == 1 and data["program"] == name
        assert all(t.dtype == torch.float32 for t in data["state_dict"].values())


def test_missing_file_hint(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import circuitfind.models.tracr as tracr_module

    monkeypatch.setattr(tracr_module, "tracr_weights_path", lambda name: tmp_path / f"{name}.pt")
    with pytest.raises(FileNotFoundError, match="compile_tracr.py"):
        load_tracr_model("tracr_reverse")


def test_tracr_proportion_prompts_paper_and_valid():
    from circuitfind.tasks import build_task
    paper = build_task("tracr_proportion", seed=0, data="paper", n_prompts=100)
    rows = torch.cat([paper.validation.clean, paper.test.clean])
    assert rows.shape == (200, 4) and rows.min() == 0 and rows.max() == 3
    assert len({tuple(r) for r in rows.tolist()}) == 200  # drawn without replacement from the 256 rows
    valid = build_task("tracr_proportion", seed=0, data="valid")
    vocab = load_tracr_model("tracr_proportion").input_vocab
    assert vocab[:4] == ("BOS", "compiler_pad", "w", "x")  # what the paper's ids 0-3 mean
    assert (valid.validation.clean[:, 0] == vocab.index("BOS")).all()
    assert (valid.validation.clean[:, 1:] >= vocab.index("w")).all()
    assert paper.validation.positions[0].tolist() == [1, 2, 3]  # the paper's metric reads positions 1-3
    assert valid.validation.positions[0].tolist() == [1, 2, 3, 4]  # every letter after BOS
    with pytest.raises(ValueError, match="unknown tracr_proportion data 'nope'; choose one of paper, valid"):
        build_task("tracr_proportion", data="nope")
    with pytest.raises(ValueError, match="n_prompts must lie in 2..128, got 200"):
        build_task("tracr_proportion", data="paper", n_prompts=200)
