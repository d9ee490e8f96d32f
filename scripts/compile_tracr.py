"""Compile the ACDC paper's tracr programs and the tracr suite, and ship them as TransformerLens weights.

tracr (and with it jax and haiku) is needed only here, so this script runs in a
separate environment; the package itself loads the files written here with plain
torch (see ``circuitfind.models.tracr``)::

    python3 -m venv /tmp/tracr-venv
    /tmp/tracr-venv/bin/pip install torch==2.13.0 transformer-lens==3.9.0 \
        tracr-pypi==1.0.0 jax==0.10.2 dm-haiku==0.0.17
    /tmp/tracr-venv/bin/python scripts/compile_tracr.py [--out-dir DIR]

For every program the converted HookedTransformer is checked against tracr's own
haiku model half-layer by half-layer (residual stream after the embeddings and
after every attention and MLP block), and its decoded outputs are checked against
the RASP evaluator, on every input of every length up to ``max_seq_len``. The
written file is then reloaded with ``torch.load(weights_only=True)`` and must
reproduce the same logits bit for bit.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import itertools
import pathlib
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import einops
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import torch
from tracr.compiler import assemble, compiling, lib
from tracr.rasp import rasp
from transformer_lens import HookedTransformer, HookedTransformerConfig

FORMAT_VERSION = 1
BOS = "BOS"
MAX_SEQ_LEN = 5
# Residual streams of the two implementations must agree to this (float32, but the
# selector-width MLP has weights in the hundreds, so exact equality is not expected).
RESIDUAL_ATOL = 1e-5
# tracr's numerical aggregate always gives BOS a tiny softmax weight, so its mean is
# only approximately the RASP value (observed error ~1e-8).
NUMERICAL_ATOL = 1e-5
DEFAULT_OUT_DIR = pathlib.Path(__file__).resolve().parents[1] / "src/circuitfind/models/weights"


def make_reverse() -> rasp.SOp:
    """tracr's ``make_reverse(tokens)``, written out so each step is visible."""
    length = lib.make_length()  # SelectorWidth(Select(tokens, tokens, TRUE))
    opp_idx = (length - rasp.indices).named("opp_idx")
    opp_idx = (opp_idx - 1).named("opp_idx-1")
    reverse_selector = rasp.Select(rasp.indices, opp_idx, rasp.Comparison.EQ)
    reverse_selector = reverse_selector.named("reverse_selector")
    return rasp.Aggregate(reverse_selector, rasp.tokens).named("reverse")


def make_proportion() -> rasp.SOp:
    """Running fraction of "x" tokens: numerical mean over positions <= the query's."""
    return lib.make_frac_prevs(rasp.tokens == "x")


# ---- the suite (circuitfind.tasks.tracr_suite): tracr's library and the RASP benchmark programs


def make_sort_unique() -> rasp.SOp:
    """Sorts distinct tokens: each moves to the number of smaller ones (defined on distinct rows)."""
    return lib.make_sort_unique(rasp.tokens, rasp.tokens)


def make_sort() -> rasp.SOp:
    """Sorts tokens that may repeat: ties broken by position (key + i / max_seq_len)."""
    return lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=MAX_SEQ_LEN, min_key=1)


def make_pair_balance() -> rasp.SOp:
    """frac_prevs("(") - frac_prevs(")"): two numerical heads in one layer, a numerical MLP."""
    return lib.make_pair_balance(rasp.tokens, "(", ")")


def make_shuffle_dyck1() -> rasp.SOp:
    return lib.make_shuffle_dyck(["()"]).named("shuffle_dyck")


def make_shuffle_dyck2() -> rasp.SOp:
    return lib.make_shuffle_dyck(["()", "{}"]).named("shuffle_dyck2")


def make_token_plus_index() -> rasp.SOp:
    """A SequenceMap of two inputs: (token + index) mod 3, one categorical MLP reading both."""
    return rasp.SequenceMap(lambda t, i: (t + i) % 3, rasp.tokens, rasp.indices).named("token_plus_index")


def make_frac_prevs_a() -> rasp.SOp:
    """frac_prevs of a token read through another token's test: the running fraction of "a"
    among {a, b, c}, whose boolean comes from a categorical MLP before the numerical head."""
    return lib.make_frac_prevs(rasp.tokens == "a").named("frac_prevs_a")


def distinct(row: Sequence[Any]) -> bool:
    return len(set(row)) == len(row)


@dataclasses.dataclass(frozen=True)
class ProgramSpec:
    name: str
    build: Callable[[], rasp.SOp]
    vocab: tuple[Any, ...]  # tracr values (ints for reverse, as in the paper)
    # The layout the ACDC paper's experiments refer to; a tracr release that compiled
    # the program differently would silently change which node is which.  None: the suite's
    # programs, whose layout is whatever tracr gives (printed, and pinned by the package tests).
    n_layers: int | None = None
    n_heads: int | None = None
    empty_heads: frozenset[tuple[int, int]] = frozenset()
    empty_mlps: frozenset[int] = frozenset()
    # The inputs the program is defined on (sort_unique: distinct tokens); checked and recorded.
    valid_row: Callable[[Sequence[Any]], bool] | None = None


PROGRAMS = (
    ProgramSpec(
        name="tracr_reverse",
        build=make_reverse,
        vocab=(1, 2, 3),
        n_layers=4,
        n_heads=1,
        # 0.0 = selector width (length); MLP 0 = its read-out, MLP 1 = opp_idx,
        # MLP 2 = opp_idx - 1, head 3.0 = the aggregate.
        empty_heads=frozenset({(1, 0), (2, 0)}),
        empty_mlps=frozenset({3}),
    ),
    ProgramSpec(
        name="tracr_proportion",
        build=make_proportion,
        vocab=("w", "x", "y", "z"),
        n_layers=2,
        n_heads=1,
        # MLP 0 = (token == "x") as a number, head 1.0 = the running mean.
        empty_heads=frozenset({(0, 0)}),
        empty_mlps=frozenset({1}),
    ),
    ProgramSpec(name="tracr_sort_unique", build=make_sort_unique, vocab=(1, 2, 3, 4, 5), valid_row=distinct),
    ProgramSpec(name="tracr_sort", build=make_sort, vocab=(1, 2, 3, 4)),
    ProgramSpec(name="tracr_hist", build=lib.make_hist, vocab=("a", "b", "c")),
    ProgramSpec(name="tracr_pair_balance", build=make_pair_balance, vocab=("(", ")")),
    ProgramSpec(name="tracr_shuffle_dyck", build=make_shuffle_dyck1, vocab=("(", ")")),
    ProgramSpec(name="tracr_shuffle_dyck2", build=make_shuffle_dyck2, vocab=("(", ")", "{", "}")),
    ProgramSpec(name="tracr_token_plus_index", build=make_token_plus_index, vocab=(0, 1, 2)),
    ProgramSpec(name="tracr_frac_prevs_a", build=make_frac_prevs_a, vocab=("a", "b", "c")),
)


# --------------------------------------------------------------------------- conversion


def unembedding_matrix(assembled: assemble.AssembledTransformerModel, d_model: int) -> np.ndarray:
    """tracr's residual -> output projection as a [d_model, d_vocab_out] matrix.

    tracr keeps this projection in a closure rather than in ``params``, so it is read
    off by unembedding the identity (without the argmax tracr applies to categorical
    outputs). A 1-dimensional (numerical) output space comes back squeezed.
    """

    @hk.without_apply_rng
    @hk.transform
    def unembed(x: jax.Array) -> jax.Array:
        return assembled.get_compiled_model().unembed(x, use_unembed_argmax=False)

    return np.asarray(unembed.apply(assembled.params, jnp.eye(d_model))).reshape(d_model, -1)


def to_transformer_lens(
    name: str, assembled: assemble.AssembledTransformerModel
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Returns (HookedTransformerConfig kwargs, parameter state dict) for ``assembled``."""
    tracr_cfg = assembled.model_config
    # The TransformerLens config below hard-codes these; fail loudly if tracr differs.
    assert tracr_cfg.activation_function is jax.nn.relu, tracr_cfg.activation_function
    assert not tracr_cfg.layer_norm and not tracr_cfg.causal, tracr_cfg

    params = {module: {k: np.asarray(v) for k, v in ps.items()} for module, ps in assembled.params.items()}
    W_E = params["token_embed"]["embeddings"]  # [d_vocab, d_model]
    # Row 0 (the BOS position) is all zero: tracr's `indices` count from the first
    # token after BOS, so position p > 0 carries index p - 1.
    W_pos = params["pos_embed"]["embeddings"]  # [max_seq_len + 1, d_model]
    d_vocab, d_model = W_E.shape
    W_U = unembedding_matrix(assembled, d_model)
    n_heads = tracr_cfg.num_heads

    cfg = dict(
        model_name=name,
        n_layers=tracr_cfg.num_layers,
        d_model=d_model,
        n_heads=n_heads,
        # tracr uses the same size for queries/keys and values.
        d_head=tracr_cfg.key_size,
        d_mlp=tracr_cfg.mlp_hidden_size,
        d_vocab=d_vocab,
        d_vocab_out=W_U.shape[1],
        n_ctx=W_pos.shape[0],
        act_fn="relu",
        normalization_type=None,
        attention_dir="bidirectional",
        positional_embedding_type="standard",
        # Matches tracr's softmax(QK^T / sqrt(key_size)).
        use_attn_scale=True,
        default_prepend_bos=False,
        # Every parameter is overwritten by load_state_dict, so skip the random init
        # (it would also consume the caller's global torch RNG).
        init_weights=False,
    )

    sd: dict[str, np.ndarray] = {
        "embed.W_E": W_E,
        "pos_embed.W_pos": W_pos,
        "unembed.W_U": W_U,
        "unembed.b_U": np.zeros(W_U.shape[1]),
    }
    for layer in range(tracr_cfg.num_layers):
        attn = f"transformer/layer_{layer}/attn"
        for tl_name, hk_name in (("Q", "query"), ("K", "key"), ("V", "value")):
            linear = params[f"{attn}/{hk_name}"]
            # haiku packs heads along the output axis of one [d_model, heads*d_head] matrix.
            sd[f"blocks.{layer}.attn.W_{tl_name}"] = einops.rearrange(
                linear["w"], "d_model (head d_head) -> head d_model d_head", head=n_heads
            )
            sd[f"blocks.{layer}.attn.b_{tl_name}"] = einops.rearrange(
                linear["b"], "(head d_head) -> head d_head", head=n_heads
            )
        out = params[f"{attn}/linear"]
        sd[f"blocks.{layer}.attn.W_O"] = einops.rearrange(
            out["w"], "(head d_head) d_model -> head d_head d_model", head=n_heads
        )
        sd[f"blocks.{layer}.attn.b_O"] = out["b"]

        mlp = f"transformer/layer_{layer}/mlp"
        sd[f"blocks.{layer}.mlp.W_in"] = params[f"{mlp}/linear_1"]["w"]
        sd[f"blocks.{layer}.mlp.b_in"] = params[f"{mlp}/linear_1"]["b"]
        sd[f"blocks.{layer}.mlp.W_out"] = params[f"{mlp}/linear_2"]["w"]
        sd[f"blocks.{layer}.mlp.b_out"] = params[f"{mlp}/linear_2"]["b"]

    # Own, contiguous float32 storages: torch.save writes a view's whole base storage.
    return cfg, {k: torch.tensor(np.ascontiguousarray(v), dtype=torch.float32) for k, v in sd.items()}


def build_hooked_transformer(cfg: dict[str, Any], params: dict[str, torch.Tensor]) -> HookedTransformer:
    """Builds the model the way ``circuitfind.models.tracr`` does.

    The files hold parameters only; buffers (attention mask, IGNORE) are
    TransformerLens implementation details and come from the fresh model.
    """
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    expected = {name for name, _ in model.named_parameters()}
    if set(params) != expected:
        raise ValueError(
            f"parameter names differ: missing {sorted(expected - set(params))}, "
            f"unexpected {sorted(set(params) - expected)}"
        )
    model.load_state_dict({**model.state_dict(), **params}, strict=True)
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------- checks


def all_rows(spec: ProgramSpec, max_len: int) -> dict[int, list[tuple[Any, ...]]]:
    """Every input the program is defined on, of every length 1..max_len, grouped by length
    (batches need one length)."""
    keep = spec.valid_row or (lambda row: True)
    return {n: [row for row in itertools.product(spec.vocab, repeat=n) if keep(row)] for n in range(1, max_len + 1)}


def encode_rows(encoding: dict[Any, int], rows: Sequence[Sequence[Any]]) -> np.ndarray:
    """tracr token ids [batch, 1 + len(row)], BOS first."""
    return np.array([[encoding[BOS]] + [encoding[t] for t in row] for row in rows])


def residual_hook_names(n_layers: int) -> list[str]:
    """TransformerLens names of the residual stream at tracr's collection points."""
    names = ["blocks.0.hook_resid_pre"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.hook_resid_mid", f"blocks.{layer}.hook_resid_post"]
    return names


def check_program(
    spec: ProgramSpec,
    program: rasp.SOp,
    assembled: assemble.AssembledTransformerModel,
    model: HookedTransformer,
    input_vocab: list[str],
    output_vocab: list[str] | None,
) -> None:
    encoding = assembled.input_encoder.encoding_map
    tracr_forward = jax.jit(assembled.forward)
    hook_names = residual_hook_names(model.cfg.n_layers)
    max_residual_err = dict.fromkeys(hook_names, 0.0)
    max_output_err = 0.0
    n_checked = 0

    for length, rows in all_rows(spec, MAX_SEQ_LEN).items():
        ids = encode_rows(encoding, rows)
        tracr_out = tracr_forward(assembled.params, jnp.asarray(ids))
        tracr_residuals = [tracr_out.transformer_output.input_embeddings]
        tracr_residuals += tracr_out.transformer_output.residuals
        logits, cache = model.run_with_cache(torch.from_numpy(ids), names_filter=hook_names)

        for hook, expected in zip(hook_names, tracr_residuals, strict=True):
            err = float(np.abs(cache[hook].numpy() - np.asarray(expected)).max())
            max_residual_err[hook] = max(max_residual_err[hook], err)
            if err > RESIDUAL_ATOL:
                raise AssertionError(f"{spec.name}: {hook} off by {err:.3g} from tracr (length {length})")

        # Position 0 is BOS, for which neither tracr nor the program defines an output.
        tracr_unembedded = np.asarray(tracr_out.unembedded_output)[:, 1:]
        logits = logits[:, 1:].numpy()
        for row, row_logits, row_tracr in zip(rows, logits, tracr_unembedded, strict=True):
            expected = rasp.evaluate(program, list(row))
            if output_vocab is None:
                got = row_logits[:, 0]
                # tracr's unembedded output is the numerical value itself.
                np.testing.assert_allclose(got, row_tracr, atol=RESIDUAL_ATOL)
                err = float(np.abs(got - np.asarray(expected, dtype=float)).max())
                max_output_err = max(max_output_err, err)
                if err > NUMERICAL_ATOL:
                    raise AssertionError(f"{spec.name}{row}: got {got.tolist()}, program gives {expected}")
            else:
                got_ids = row_logits.argmax(-1)
                # tracr's unembedded output is already the argmax for categorical programs.
                assert got_ids.tolist() == row_tracr.tolist(), (row, got_ids, row_tracr)
                got = [output_vocab[i] for i in got_ids]
                if got != [str(v) for v in expected]:
                    raise AssertionError(f"{spec.name}{row}: got {got}, program gives {expected}")
            n_checked += 1

    print(f"  checked {n_checked} inputs (every row of length 1..{MAX_SEQ_LEN} over {list(spec.vocab)}):")
    print(f"    residual stream vs tracr, max |diff| (atol {RESIDUAL_ATOL:g}):")
    for hook, err in max_residual_err.items():
        print(f"      {hook:<26} {err:.2e}")
    if output_vocab is None:
        print(f"    decoded == RASP evaluator, max |diff| {max_output_err:.2e} (atol {NUMERICAL_ATOL:g})")
    else:
        print("    decoded outputs == RASP evaluator and tracr's own decoding: all equal")

    # One human-readable example of what each output position holds.
    row = tuple(str(v) for v in all_rows(spec, MAX_SEQ_LEN)[4][-1])
    example = model(torch.tensor([[input_vocab.index(t) for t in (BOS, *row)]]))[0]
    if output_vocab is None:
        shown = [round(v, 4) for v in example[:, 0].tolist()]
    else:
        shown = [output_vocab[i] for i in example.argmax(-1).tolist()]
    print(f"    e.g. {[BOS, *row]} -> {shown} (position 0 = BOS: undefined)")


def empty_components(model: HookedTransformer) -> tuple[list[str], list[str]]:
    """Heads and MLPs whose weights are all zero (tracr pads layers it does not need)."""
    heads, mlps = [], []
    for layer, block in enumerate(model.blocks):
        for head in range(model.cfg.n_heads):
            weights = (block.attn.W_Q[head], block.attn.W_K[head], block.attn.W_V[head], block.attn.W_O[head])
            if all(not w.any() for w in weights):
                heads.append(f"{layer}.{head}")
        if not block.mlp.W_in.any() and not block.mlp.W_out.any():
            mlps.append(str(layer))
    return heads, mlps


def check_layout(spec: ProgramSpec, model: HookedTransformer) -> None:
    cfg = model.cfg
    heads, mlps = empty_components(model)
    if spec.n_layers is not None:
        assert (cfg.n_layers, cfg.n_heads) == (spec.n_layers, spec.n_heads), (spec.name, cfg)
        expected_heads = sorted(f"{layer}.{head}" for layer, head in spec.empty_heads)
        expected_mlps = sorted(str(layer) for layer in spec.empty_mlps)
        assert (heads, mlps) == (expected_heads, expected_mlps), (spec.name, heads, mlps)
    print(
        f"  layout: n_layers={cfg.n_layers} n_heads={cfg.n_heads} d_model={cfg.d_model} d_head={cfg.d_head} "
        f"d_mlp={cfg.d_mlp} d_vocab={cfg.d_vocab} d_vocab_out={cfg.d_vocab_out} n_ctx={cfg.n_ctx}"
    )
    print(f"  all-zero heads: {heads or 'none'}; all-zero MLPs: {mlps or 'none'}")


# --------------------------------------------------------------------------- main


def compile_program(spec: ProgramSpec, out_dir: pathlib.Path) -> pathlib.Path:
    print(f"{spec.name}:")
    # tracr numbers every RASP expression from a global counter, and labels (hence the residual
    # layout) sort by those numbers: start each program from 1, as a fresh process does, so a program
    # compiles to the same weights whether alone or after others.
    rasp.RASPExpr._ids = itertools.count(1)
    program = spec.build()
    assembled = compiling.compile_rasp_to_model(
        program, vocab=set(spec.vocab), max_seq_len=MAX_SEQ_LEN, compiler_bos=BOS
    )
    input_encoder = assembled.input_encoder
    # Token ids are tracr's own (its sorted basis order), so W_E rows need no permuting.
    input_vocab = [str(v) for v, _ in sorted(input_encoder.encoding_map.items(), key=lambda kv: kv[1])]
    output_vocab = None
    if rasp.is_categorical(program):
        output_map = assembled.output_encoder.encoding_map
        output_vocab = [str(v) for v, _ in sorted(output_map.items(), key=lambda kv: kv[1])]
    # The files key tokens by their string form, which must not merge two tokens.
    assert len(set(input_vocab)) == len(input_vocab) and BOS in input_vocab, input_vocab
    assert output_vocab is None or len(set(output_vocab)) == len(output_vocab), output_vocab

    cfg, params = to_transformer_lens(spec.name, assembled)
    model = build_hooked_transformer(cfg, params)

    # W_U must read exactly the program's output directions, in output-id order.
    labels = assembled.residual_labels
    W_U = params["unembed.W_U"]
    is_selection = W_U.min() >= 0 and torch.equal(W_U.sum(0), torch.ones(W_U.shape[1]))
    assert is_selection, "W_U is not a selection of residual dimensions"
    read = [labels[i] for i in W_U.argmax(0).tolist()]
    if output_vocab is None:
        assert read == [program.label], read
    else:
        assert read == [f"{program.label}:{v}" for v in output_vocab], read
    print(f"  input vocab (id order): {input_vocab}; output vocab: {output_vocab or 'numerical'}")
    print(f"  W_U reads residual dims {read}")

    check_layout(spec, model)
    check_program(spec, program, assembled, model, input_vocab, output_vocab)

    payload = {
        "format_version": FORMAT_VERSION,
        "program": spec.name,
        "cfg": cfg,
        "state_dict": params,
        "input_vocab": input_vocab,
        "output_vocab": output_vocab,
        "bos": BOS,
        "pad": input_encoder.pad_token,
        "max_seq_len": MAX_SEQ_LEN,
        # The inputs the program is defined on: all rows over its vocabulary, or only rows of
        # distinct tokens (sort_unique).
        "distinct_tokens": spec.valid_row is distinct,
    }
    path = out_dir / f"{spec.name}.pt"
    torch.save(payload, path)

    # The shipped file alone, loaded without pickle, must rebuild the same model.
    loaded = torch.load(path, weights_only=True)
    reloaded = build_hooked_transformer(loaded["cfg"], loaded["state_dict"])
    rows = all_rows(spec, MAX_SEQ_LEN)[MAX_SEQ_LEN]
    ids = torch.from_numpy(encode_rows(input_encoder.encoding_map, rows))
    assert torch.equal(reloaded(ids), model(ids)), "reloaded model differs"
    assert {k: v for k, v in loaded.items() if k != "state_dict"} == {
        k: v for k, v in payload.items() if k != "state_dict"
    }
    print(f"  wrote {path} ({path.stat().st_size} bytes); weights_only reload gives identical logits")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out-dir",
        type=pathlib.Path,
        default=DEFAULT_OUT_DIR,
        help=f"where to write <program>.pt (default: {DEFAULT_OUT_DIR})",
    )
    parser.add_argument(
        "--programs", nargs="+", choices=[spec.name for spec in PROGRAMS], help="compile only these programs"
    )
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    # haiku/jax deprecation chatter says nothing about these programs.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    packages = ("tracr-pypi", "jax", "dm-haiku", "torch", "transformer-lens")
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in packages)
    print(f"compiling with {versions}")
    for spec in PROGRAMS:
        if args.programs and spec.name not in args.programs:
            continue
        compile_program(spec, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
