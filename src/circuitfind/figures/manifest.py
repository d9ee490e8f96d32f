"""A figure's manifest (``<name>.manifest.json``): the command, the version, the figure spec, every
sweep with its status and command line, and every run folder behind the picture or table."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from .. import __version__
from ..core.files import atomic_write_text
from ..runs.rundir import SUMMARY
from .plan import Plan
from .sweeps import SweepOutcome, cli_arguments, relative, used_runs


def run_records(folders: list[Path]) -> list[dict]:
    records = []
    for folder in folders:
        summary = json.loads((Path(folder) / SUMMARY).read_text())
        record = {key: summary.get(key) for key in ("task", "method", "corruption", "metric", "graph", "seed",
                                                    "parameter_name", "parameter", "n_edges_kept", "config_hash")}
        if summary.get("curve"):
            record["curve_points"] = len(pd.read_csv(Path(folder) / summary["curve"]))
        records.append(dict(path=relative(folder), **record))
    return records


def write_manifest(path: Path, plan_: Plan, outcomes: list[SweepOutcome], outputs: list[Path], argv: list[str],
                   started: float, **extra) -> None:
    manifest = dict(
        figure=plan_.spec.name,
        created=datetime.datetime.now().isoformat(timespec="seconds"),
        command=argv,
        circuitfind_version=__version__,
        preset=plan_.preset,
        tasks=plan_.tasks,
        corruptions=plan_.corruptions,
        skipped_tasks=plan_.skipped,
        outputs=[relative(p) for p in outputs],
        wall_s=round(time.time() - started, 1),
        sweeps=[dict(task=o.sweep.task, method=o.sweep.method, corruption=o.sweep.corruption, metric=o.sweep.metric,
                     parameter=o.sweep.parameter, values=list(o.sweep.values), overrides=list(o.sweep.overrides),
                     folder=relative(o.sweep.folder), status=o.status, ran=len(o.ran), wall_s=o.wall_s,
                     errors=o.errors, command=["circuitfind", *cli_arguments(o.sweep)])
                for o in outcomes],
        runs=run_records(used_runs(plan_.sweeps)),
        figure_spec=OmegaConf.to_container(plan_.spec, resolve=True),
        **extra,
    )
    atomic_write_text(path, json.dumps(manifest, indent=2, default=str) + "\n")
