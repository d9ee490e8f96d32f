"""tracr-compiled models (the ACDC paper's tracr-reverse and tracr-proportion, and the tracr suite).

The weights were compiled once with tracr by ``scripts/compile_tracr.py`` and ship
inside the package as plain torch files, so nothing here needs jax or tracr.

Token conventions (tracr's): every input starts with the BOS token, and tracr's
``indices`` count from the first token after it. The output at the BOS position is
undefined (tracr's own decoder discards it), so ``decode`` skips it. The pad token
exists in the vocabulary only because tracr always adds one; tracr's models do not
mask it, so ``encode`` rejects it rather than pad rows to one length.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files

import torch

from .view import backend, tl3

FORMAT_VERSION = 1
TRACR_PROGRAMS = ("tracr_reverse", "tracr_proportion",
                  # the suite (tasks/tracr_suite.py): ground-truth circuits derived from the weights
                  "tracr_sort_unique", "tracr_sort", "tracr_hist", "tracr_pair_balance", "tracr_shuffle_dyck",
                  "tracr_shuffle_dyck2", "tracr_token_plus_index", "tracr_frac_prevs_a")


@dataclass(frozen=True)
class TracrModel:
    """A compiled RASP program as a HookedTransformer, with its token codec."""

    model: object  # a HookedTransformer (TransformerLens 3)
    input_vocab: tuple[str, ...]  # index = token id
    output_vocab: tuple[str, ...] | None  # None: numerical output (1 dim)
    bos: str
    max_seq_len: int  # excluding BOS
    # tracr always adds a pad token to the vocabulary; its models do not mask it.
    pad: str = "compiler_pad"
    # The program is defined only on rows of distinct tokens (sort_unique).
    distinct_tokens: bool = False

    def __post_init__(self) -> None:
        cfg = self.model.cfg
        n_out = 1 if self.output_vocab is None else len(self.output_vocab)
        if len(self.input_vocab) != cfg.d_vocab or n_out != cfg.d_vocab_out:
            raise ValueError(
                f"vocabularies ({len(self.input_vocab)} in, {n_out} out) do not fit the model "
                f"(d_vocab={cfg.d_vocab}, d_vocab_out={cfg.d_vocab_out})"
            )
        if self.bos not in self.input_vocab:
            raise ValueError(f"BOS token {self.bos!r} is not in the input vocabulary {self.input_vocab}")

    def encode(self, rows: Sequence[Sequence[str]]) -> torch.Tensor:
        """Token ids [batch, 1 + len(row)] for ``rows`` (given without BOS), on the model's device."""
        if len(rows) == 0:
            raise ValueError("encode() needs at least one row")
        lengths = {len(row) for row in rows}
        if len(lengths) > 1:
            raise ValueError(f"rows must all have the same length, got lengths {sorted(lengths)}")
        (length,) = lengths
        if length > self.max_seq_len:
            raise ValueError(
                f"rows of length {length} exceed max_seq_len {self.max_seq_len} (BOS not counted)"
            )
        token_ids = {token: i for i, token in enumerate(self.input_vocab)}
        ids = []
        for row in rows:
            row_ids = [token_ids[self.bos]]
            for token in row:
                # BOS is prepended here, and tracr models do not mask pad: a row holding
                # either is a caller's mistake, not an input the program defines.
                if token in (self.bos, self.pad) or not isinstance(token, str) or token not in token_ids:
                    valid = [t for t in self.input_vocab if t not in (self.bos, self.pad)]
                    raise ValueError(f"invalid token {token!r} in row {list(row)!r}; valid tokens: {valid}")
                row_ids.append(token_ids[token])
            ids.append(row_ids)
        return torch.tensor(ids, dtype=torch.long, device=self.model.cfg.device)

    def decode(self, logits: torch.Tensor) -> list[list[str | float]]:
        """Per row, the output at positions 1.. (BOS skipped): an output token, or a float when numerical."""
        n_out = 1 if self.output_vocab is None else len(self.output_vocab)
        if logits.ndim != 3 or logits.shape[-1] != n_out:
            raise ValueError(f"expected logits of shape [batch, pos, {n_out}], got {tuple(logits.shape)}")
        body = logits[:, 1:].detach()
        if self.output_vocab is None:
            return body[..., 0].float().cpu().tolist()
        vocab = self.output_vocab
        return [[vocab[i] for i in row] for row in body.argmax(-1).cpu().tolist()]


def tracr_weights_path(name: str) -> pathlib.Path:
    """Location of the shipped weights file for program ``name`` (may not exist)."""
    _check_name(name)
    # importlib.resources rather than __file__ so that the path follows the package
    # wherever it is installed (editable or not); package data lands as regular files.
    return pathlib.Path(str(files("circuitfind.models") / "weights" / f"{name}.pt"))


def load_tracr_model(
    name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> TracrModel:
    """Loads a tracr program's HookedTransformer (under TransformerLens 4: a native bridge holding its
    weights, as a model view), frozen, in eval mode, and its codec."""
    path = tracr_weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"tracr weights {path} not found; regenerate them with `python scripts/compile_tracr.py` "
            "(needs tracr, jax and dm-haiku: pip install '.[tracr]')"
        )
    data = torch.load(path, map_location="cpu", weights_only=True)
    if data.get("format_version") != FORMAT_VERSION or data.get("program") != name:
        raise ValueError(
            f"{path}: expected format_version {FORMAT_VERSION} for program {name!r}, got "
            f"format_version {data.get('format_version')!r} for program {data.get('program')!r}"
        )
    if backend() == "tl4":  # HookedTransformer weights: in TransformerLens 4's native model
        from .view import native

        model = native.native_model_view(data["cfg"], data["state_dict"], dtype=dtype, device=device)
        return _tracr_model(model, data)

    cfg = tl3.config(**data["cfg"], device=str(torch.device(device)), dtype=dtype)
    model = tl3.hooked_transformer(cfg)
    params = data["state_dict"]
    expected = {param_name for param_name, _ in model.named_parameters()}
    if set(params) != expected:
        raise ValueError(
            f"{path}: parameters do not match the model: missing {sorted(expected - set(params))}, "
            f"unexpected {sorted(set(params) - expected)}"
        )
    # The file holds parameters only; buffers (attention mask, IGNORE) are
    # TransformerLens internals, so the fresh model's own are kept. Strict loading
    # still rejects any name the model does not have.
    model.load_state_dict({**model.state_dict(), **params}, strict=True)
    model.eval().requires_grad_(False)
    return _tracr_model(model, data)


def _tracr_model(model, data: dict) -> TracrModel:
    output_vocab = data["output_vocab"]
    return TracrModel(
        model=model,
        input_vocab=tuple(data["input_vocab"]),
        output_vocab=None if output_vocab is None else tuple(output_vocab),
        bos=data["bos"],
        max_seq_len=int(data["max_seq_len"]),
        pad=data["pad"],
        distinct_tokens=bool(data.get("distinct_tokens", False)),
    )


def _check_name(name: str) -> None:
    if name not in TRACR_PROGRAMS:
        raise ValueError(f"unknown tracr program {name!r}; valid names: {', '.join(TRACR_PROGRAMS)}")
