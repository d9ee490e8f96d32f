"""``circuitfind``: the Hydra command line.

    circuitfind                                   # ACDC on tracr-reverse (the offline default)
    circuitfind task=tracr_proportion tau=0.01
    circuitfind -m task=tracr_reverse tau=0.001,0.01,0.1

Bad input ends the run with one line on stderr and exit code 2 (``debug=true`` shows the traceback).
In a ``-m`` sweep a failing job is reported and written to its folder's ``error.txt``; the others go on.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
import warnings
from importlib.resources import files
from pathlib import Path

# Every hub call retries for ~20 s without network; a run that needs the hub says so itself.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from .checkpoint import RunInterrupted  # noqa: E402
from .pipeline import run  # noqa: E402
from .rundir import atomic_write_text, config_hash  # noqa: E402

log = logging.getLogger("circuitfind")


def _hash_of_root(*, _root_) -> str:
    """``${cf_hash:}`` in hydra.run.dir: the config's hash, so a config always finds its folder."""
    return config_hash(_root_)


if not OmegaConf.has_resolver("cf_hash"):
    OmegaConf.register_new_resolver("cf_hash", _hash_of_root)

def _format_summary(summary: dict) -> str:
    parts = [f"{summary['task']} {summary['method']} ({summary['corruption']}, {summary['graph']} graph)",
             f"kept {summary['n_edges_kept']}/{summary['n_edges_total']} edges",
             f"{summary['metric']} {summary['metric_circuit']:.4g}"]
    if summary.get("edge_tpr") is not None:
        parts.append(f"edge TPR {summary['edge_tpr']:.3f} FPR {summary['edge_fpr']:.3f}")
    parts.append(f"{summary['wall_s']:.2f} s")
    return ", ".join(parts)


GROUPS = ("task", "model", "corruption", "method", "graph", "threshold", "experiment")


def group_options(group: str) -> list[str]:
    folder = files("circuitfind.configs") / group
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")) if folder.is_dir() else []


def unknown_choice(argv: list[str]) -> str | None:
    """Hydra answers an unknown option with a multi-line composition error; say it in one line."""
    for arg in argv:
        match = re.fullmatch(r"(?:\+|~)?([a-z_]+)=(.*)", arg)
        if not match or match[1] not in GROUPS:
            continue
        group, value = match[1], match[2]
        options = group_options(group)
        for choice in re.split(r",", value.strip("[]")) if value else []:
            if choice and choice not in options and not choice.startswith(("choice(", "range(", "glob(")):
                return f"unknown {group} {choice!r}; choose one of {', '.join(options)}"
    return None


def main() -> None:
    problem = unknown_choice(sys.argv[1:])
    if problem:
        print(f"circuitfind: error: {problem}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


@hydra.main(version_base="1.3", config_path="pkg://circuitfind.configs", config_name="config")
def hydra_main(cfg: DictConfig) -> dict | None:
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        summary = run(cfg, folder)
    except RunInterrupted as stop:
        print(f"circuitfind: {stop}. Run the same command again to resume "
              f"(or add resume=true hydra.run.dir={folder}).", file=sys.stderr)
        sys.exit(130 if stop.signal_name == "SIGINT" else 143)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # one line for the user; the traceback on request or in the folder
        if cfg.get("debug", False):
            raise
        atomic_write_text(folder / "error.txt", traceback.format_exc())
        message = f"circuitfind: error: {error}"
        print(message, file=sys.stderr)
        if sweeping:  # one failed job must not sink the sweep
            return None
        sys.exit(2)
    log.info(_format_summary(summary))
    log.info("run folder: %s", folder)
    return summary


if __name__ == "__main__":
    main()
