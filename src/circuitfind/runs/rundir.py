"""The run folder: what every run leaves behind, written so that a half-finished run never looks done.

    edges.csv     every edge of the graph: edge, sender, receiver, score, kept, canonical (score
                  empty where the method never scored the edge)
    trace.csv     one row per search step (ACDC's edge tests): step, edge, delta, loss, kept, n_edges
    curve.csv     one row per circuit of a curve read from one run (HISP's top-k)
    <table>.csv   the method's own tables (SP's training.csv, gates.csv; HISP's ranking.csv)
    circuit.png, circuit.dot   the kept graph
    circuit.json  the kept edges and their scores in the MIB format (``circuit_json``)
    summary.json  the numbers of the run; written last, so its presence means the run completed

``write_result`` writes the data files of a method's result; the pipeline draws the circuit and
then writes the summary.

Each file is written to a temporary name in the same folder and renamed into place (atomic on POSIX).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from ..core.files import atomic_write, atomic_write_text

if TYPE_CHECKING:  # not at run time: the CLI hashes configs before torch is imported
    from ..core.graph import EdgeMask
    from ..methods.result import MethodResult

SUMMARY = "summary.json"
EDGES = "edges.csv"
TRACE = "trace.csv"
CURVE = "curve.csv"
TRACE_COLUMNS = ("step", "edge", "delta", "loss", "kept", "n_edges")


def _csv(header: Iterable[str], rows: Iterable[Iterable]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _number(x: float) -> str:
    """Full precision (repr) so that reruns compare byte for byte; inf/nan spelled plainly."""
    return repr(float(x)) if math.isfinite(x) else ("inf" if x > 0 else "-inf" if x < 0 else "nan")


def _score(x: float) -> str:
    """An edge's score; empty where the method gave it none (stored as +-inf: an ACDC edge never
    reached under max_edge_tests or dropped untested because its receiver fed nothing, an edge
    without a gate in SP or HISP), so that no reader takes it for the largest score."""
    return _number(x) if math.isfinite(x) or math.isnan(x) else ""


def write_edges(folder: Path, result: MethodResult, canonical: EdgeMask | None) -> None:
    graph = result.graph
    kept = result.circuit.kept.tolist()
    truth = canonical.kept.tolist() if canonical is not None else [None] * graph.n_edges
    rows = (
        (e.name, e.sender, e.receiver, _score(s), int(k), "" if c is None else int(c))
        for e, s, k, c in zip(graph.edges, result.scores.tolist(), kept, truth)
    )
    atomic_write_text(folder / EDGES, _csv(("edge", "sender", "receiver", "score", "kept", "canonical"), rows))


def write_trace(folder: Path, trace: list[dict]) -> None:
    rows = ((r["step"], r["edge"], _number(r["delta"]), _number(r["loss"]), int(r["kept"]), r["n_edges"])
            for r in trace)
    atomic_write_text(folder / TRACE, _csv(TRACE_COLUMNS, rows))


def write_table(folder: Path, filename: str, rows: list[dict]) -> None:
    """A method's own table (SP's training log, HISP's ranking, ...): columns from the first row."""
    columns = list(rows[0]) if rows else []
    atomic_write_text(folder / filename, _csv(columns, (
        [_number(v) if isinstance(v, float) else v for v in (row[c] for c in columns)] for row in rows)))


def write_result(folder: Path, result: MethodResult, canonical: EdgeMask | None, curve: list[dict] | None,
                 d_model: int | None = None) -> None:
    """Every data file of a method's result: its edges (and circuit.json), its trace, its tables,
    and ``curve`` (the rows of its one-run curve, evaluated by the pipeline).  The pipeline draws
    the circuit (circuit.png, circuit.dot) in a phase of its own."""
    from .circuit_json import write_circuit_json

    write_edges(folder, result, canonical)
    write_circuit_json(folder, result, d_model)
    if result.trace is not None:
        write_trace(folder, result.trace)
    for filename, rows in result.tables.items():
        write_table(folder, filename, rows)
    if curve is not None:
        write_table(folder, CURVE, curve)


def write_summary(folder: Path, summary: dict) -> None:
    atomic_write_text(folder / SUMMARY, json.dumps(summary, indent=2, sort_keys=False, allow_nan=True) + "\n")


def read_summary(folder: Path) -> dict | None:
    path = Path(folder) / SUMMARY
    if not path.is_file():
        return None
    return json.loads(path.read_text())


# ---- which run a folder holds -------------------------------------------------------------------
# Keys that change how a run is carried out but not what it computes; left out of the config hash.
NOT_HASHED = ("progress", "debug", "device", "threads", "resume", "force", "checkpoint", "threshold", "hydra", "store",
              "draw")
# Method settings that change how fast a run is, never what it finds (tests hold them to that).
NOT_HASHED_METHOD = ("batch_edges",)


class FolderConflict(ValueError):
    """The run folder holds a run of a different config."""


def config_hash(cfg) -> str:
    """A run's identity: the hash of its resolved config, minus execution-only keys (and the
    task's sweep lists, which say how to sweep, not what one run computes, and the method's
    speed settings)."""
    from omegaconf import OmegaConf

    plain = {}
    for key in cfg:
        if key in NOT_HASHED:
            continue
        value = cfg[key]
        plain[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    if isinstance(plain.get("task"), dict):
        # ground_truth: null is every task's default; left out so that adding the key kept old hashes
        plain["task"] = {k: v for k, v in plain["task"].items()
                         if k != "sweeps" and not (k == "ground_truth" and v is None)}
    if isinstance(plain.get("model"), dict):  # where activations are kept changes no result
        plain["model"] = {k: v for k, v in plain["model"].items() if k != "activation_device"}
    if isinstance(plain.get("method"), dict):
        plain["method"] = {k: v for k, v in plain["method"].items() if k not in NOT_HASHED_METHOD}
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]


def folder_state(folder: Path, config_hash: str) -> str:
    """``complete`` (a summary of this config), ``resumable`` (a checkpoint) or ``empty``; a folder
    holding another config's results is an error, so nothing is ever written over them."""
    from ..core.checkpoint import CHECKPOINT

    folder = Path(folder)
    summary = read_summary(folder)
    if summary is not None:
        if summary.get("config_hash") != config_hash:
            raise FolderConflict(
                f"{folder} holds a completed run of a different config (hash {summary.get('config_hash')}, "
                f"this one {config_hash}); choose another folder or delete it")
        return "complete"
    return "resumable" if (folder / CHECKPOINT).is_file() else "empty"


# ---- the store of runs shared by sweeps ----------------------------------------------------------
# A `-m` sweep writes into its own folder (hydra.sweep.dir, one per command), so that reporting on it
# reports exactly that sweep; its run folders are still keyed by config hash.  The store
# (`store`, default outputs/runs: where single runs live) keeps one copy of every completed run, so a
# sweep job whose config already ran anywhere is copied, not recomputed.
def store_folder(store: Path, cfg, identity: str) -> Path:
    """Where the store keeps the run of ``cfg`` (the single-run layout: task/method/hash)."""
    return Path(store) / str(cfg.task.name) / str(cfg.method.name) / identity


def copy_run(source: Path, target: Path, identity: str) -> bool:
    """Copy a complete run of ``identity`` from ``source`` into ``target`` (not its .hydra, which is
    the target job's own); the summary last, so an interrupted copy is an unfinished folder."""
    summary = read_summary(source)
    if summary is None or summary.get("config_hash") != identity or _same(source, target):
        return False
    target.mkdir(parents=True, exist_ok=True)
    for item in sorted(Path(source).iterdir()):
        if item.is_file() and item.name != SUMMARY and not item.name.startswith("."):
            atomic_write(target / item.name, lambda tmp, item=item: shutil.copyfile(item, tmp))
    atomic_write(target / SUMMARY, lambda tmp: shutil.copyfile(Path(source) / SUMMARY, tmp))
    return True


def publish_run(folder: Path, store_run: Path, identity: str) -> bool:
    """Put a copy of the completed run in ``folder`` into the store, unless the store already holds
    something there (a complete run, or an unfinished one that may resume)."""
    store_run = Path(store_run)
    if store_run.exists() or _same(folder, store_run):
        return False
    store_run.parent.mkdir(parents=True, exist_ok=True)
    staging = store_run.with_name(f".{store_run.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    copy_run(folder, staging, identity)
    if (Path(folder) / ".hydra").is_dir():
        shutil.copytree(Path(folder) / ".hydra", staging / ".hydra")
    try:
        os.rename(staging, store_run)  # atomic; fails if another job published it meanwhile
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        return False
    return True


def _same(a: Path, b: Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()
