"""``circuitfind``: the Hydra command line.

    circuitfind                                   # ACDC on tracr-reverse (the offline default)
    circuitfind task=tracr_proportion tau=0.01
    circuitfind -m task=tracr_reverse tau=0.001,0.01,0.1

Importing torch and TransformerLens takes 10-40 s on a shared machine, so this module imports
neither until the input has been checked: ``--help`` and ``--version`` answer from the config files
and package metadata, and a single run's config is composed, checked (``validate.check_config``) and
its run folder made writable (``validate.check_output_folder``) before Hydra starts the job, whose
first act would otherwise be to write into that folder.  Only then is ``pipeline`` imported.

Bad input ends the run with one line on stderr and exit code 2 (``debug=true`` shows the traceback),
file-system trouble (a read-only or full disk, a file where a folder must be, no permission)
included.  In a ``-m`` sweep a failing job is reported and written to its folder's ``error.txt``; the
others go on.  A successful run removes an ``error.txt`` that an earlier failure left in its folder.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
import warnings
from pathlib import Path

# Every hub call retries for ~20 s without network; a run that needs the hub says so itself.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from .clihelp import help_text, version_text  # noqa: E402
from .core.files import atomic_write_text  # noqa: E402
from .core.signals import exit_code, signal_name, signals_raise  # noqa: E402
from .runs.rundir import config_hash  # noqa: E402
from .runs.validate import (ConfigError, check_config, check_output_folder, compose_config,  # noqa: E402
                       describe_os_error, group_options, unknown_key)

log = logging.getLogger("circuitfind")
ERROR_FILE = "error.txt"
GROUPS = ("task", "model", "corruption", "method", "graph", "threshold", "experiment")
# Divergences from the unpatched model: never negative, so a tiny negative value is rounding.
DIVERGENCES = ("kl", "l2")
ROUNDING = 1e-6


def _hash_of_root(*, _root_) -> str:
    """``${cf_hash:}`` in hydra.run.dir: the config's hash, so a config always finds its folder."""
    return config_hash(_root_)


if not OmegaConf.has_resolver("cf_hash"):
    OmegaConf.register_new_resolver("cf_hash", _hash_of_root)


def _metric_value(name: str, value: float) -> str:
    if name in DIVERGENCES and -ROUNDING < value < 0:
        return f"{name} 0"
    return f"{name} {value:.4g}"


def format_summary(summary: dict) -> str:
    """The one line a run prints: what ran, what it kept, how good it is, how long it took."""
    unit = "nodes" if summary["graph"] == "nodes" else "edges"
    task = summary["task"] + (f" ({summary['data']} prompts)" if summary.get("data") else "")
    parts = [f"{task} {summary['method']} ({summary['corruption']}, {summary['graph']} graph)",
             f"kept {summary['n_edges_kept']}/{summary['n_edges_total']} {unit}",
             _metric_value(summary["metric"], summary["metric_circuit"])]
    faithful = (summary.get("faithfulness") or {}).get("validation")
    if faithful is not None and faithful == faithful:
        parts.append(f"faithfulness {faithful:.3f}")
    if summary.get("edge_tpr") is not None:
        parts.append(f"edge TPR {summary['edge_tpr']:.3f} FPR {summary['edge_fpr']:.3f}")
    chosen = (summary.get("method_details") or {}).get("chosen_by")
    if chosen:
        parts.append(chosen)
    parts.append(f"{summary['wall_s']:.2f} s")
    return ", ".join(parts)



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


SWEEP_FUNCTIONS = ("choice(", "range(", "glob(", "interval(", "tag(", "sort(", "shuffle(")


def _is_sweep(override: str) -> bool:
    """A ``key=a,b`` or ``key=range(...)`` override: one value per job, not one for the command."""
    value = override.partition("=")[2]
    depth, quote = 0, None
    for char in value:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            return True
    return value.startswith(SWEEP_FUNCTIONS)


def precheck(argv: list[str]) -> None:
    """Before Hydra writes anything: a single run's config is checked and its folder made writable;
    a sweep's parent folder is checked (each job's config is checked as the job starts)."""
    if any(arg.startswith("-") and arg not in ("-m", "--multirun") for arg in argv):
        return  # Hydra's own flags (--cfg, --info, -cp, ...): Hydra answers them
    sweeping = any(arg in ("-m", "--multirun") for arg in argv)
    overrides = [arg for arg in argv if not arg.startswith("-") and not (sweeping and _is_sweep(arg))]
    try:
        cfg = compose_config(*overrides, return_hydra_config=True)
    except Exception as error:  # Hydra's override and composition errors: their first line says it
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        key = re.fullmatch(r"Could not override '([^']+)'\.?", first)
        raise ConfigError(unknown_key(key[1], overrides) if key else first) from None
    check_shorthands(argv, cfg.method.name)
    if sweeping:
        check_output_folder(OmegaConf.select(cfg, "hydra.sweep.dir"), create=False)
        return
    check_config(cfg)
    check_output_folder(OmegaConf.select(cfg, "hydra.run.dir"))


def check_shorthands(argv: list[str], method: str) -> None:
    """A method's top-level shorthand (ACDC's ``tau=``) given to another method would be silently
    ignored: refuse it (unless ``method=`` is itself swept, where each job reads what it needs)."""
    from .methods.spec import load_specs, ordered_specs

    if any(arg.startswith("method=") and _is_sweep(arg) for arg in argv):
        return
    specs = load_specs()
    owners: dict = {}  # a key several methods read (tau): named after the first in the specs' order
    for spec in ordered_specs():
        if spec.sweep is not None and spec.sweep.key in spec.top_level:
            owners.setdefault(spec.sweep.key, spec)
    for arg in argv:
        key = arg.lstrip("+~").partition("=")[0]
        owner = owners.get(key)
        if owner is not None and key not in specs[method].top_level:
            raise ConfigError(f"{key} is {owner.label}'s setting; method {method} does not read it "
                              f"(method={owner.name} {key}=..., or drop {key}=)")


def _print_quietly(text: str) -> None:
    """Print ``text``; a reader that stops early (``circuitfind --help | head``) is not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit


def main() -> None:
    argv = sys.argv[1:]
    if any(arg in ("-h", "--help") for arg in argv):
        return _print_quietly(help_text())
    if any(arg in ("-V", "--version") for arg in argv):
        return _print_quietly(version_text())
    try:
        with signals_raise():  # Ctrl-C or SIGTERM before a run starts (imports, Hydra): one line too
            check_command_line(argv)
            hydra_main()
    except KeyboardInterrupt as stop:
        _print_over_progress(f"circuitfind: interrupted by {signal_name(stop)} before the run started; nothing was "
                             "written")
        sys.exit(exit_code(signal_name(stop)))


def _print_over_progress(line: str) -> None:
    """``line`` on stderr, over a progress bar that a signal left half-drawn on a terminal."""
    if sys.stderr.isatty():
        print("\r\x1b[K", end="", file=sys.stderr)
    print(line, file=sys.stderr)


def check_command_line(argv: list[str]) -> None:
    """Everything the command line alone can be refused for: one line on stderr and exit code 2."""
    try:
        problem = unknown_choice(argv)
        if problem:
            raise ConfigError(problem)
        precheck(argv)
    except ConfigError as error:
        if "debug=true" in argv:
            raise
        print(f"circuitfind: error: {error}", file=sys.stderr)
        sys.exit(2)


def _fail(error: Exception, folder: Path, sweeping: bool) -> None:
    """One line on stderr (the traceback goes to error.txt where it can be written); exit 2, or
    return so that a sweep's other jobs go on."""
    message = describe_os_error(error) if isinstance(error, OSError) else str(error)
    try:
        atomic_write_text(folder / ERROR_FILE, traceback.format_exc())
    except OSError:
        pass  # the folder itself is the trouble: the line below says so
    print(f"circuitfind: error: {message}", file=sys.stderr)
    if not sweeping:
        sys.exit(2)


@hydra.main(version_base="1.3", config_path="pkg://circuitfind.configs", config_name="config")
def hydra_main(cfg: DictConfig) -> dict | None:
    hydra_cfg = HydraConfig.get()
    return run_job(cfg, Path(hydra_cfg.runtime.output_dir), sweeping=hydra_cfg.mode == RunMode.MULTIRUN)


def run_job(cfg: DictConfig, folder: Path, sweeping: bool = False) -> dict | None:
    """One Hydra job: check, run, print the summary line; any failure is one line (and exit 2
    unless ``sweeping``, where the other jobs go on)."""
    try:
        check_config(cfg)  # a sweep's jobs are checked here, each before anything loads
        from .core.checkpoint import RunInterrupted  # torch: only once the config is known to be good
        from .runs.pipeline import run
    except ConfigError as error:
        return _fail(error, folder, sweeping)
    try:
        summary = run(cfg, folder)
    except RunInterrupted as stop:
        then = (f"Run the same command again to resume (or add hydra.run.dir={folder})" if stop.resumable
                else "Run the same command again to start over")
        _print_over_progress(f"circuitfind: {stop}. {then}.")
        sys.exit(exit_code(stop.signal_name))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # one line for the user; the traceback on request or in the folder
        if cfg.get("debug", False):
            raise
        return _fail(error, folder, sweeping)
    (folder / ERROR_FILE).unlink(missing_ok=True)  # an earlier failure of this config is history now
    log.info(format_summary(summary))
    log.info("run folder: %s", folder)
    return summary


if __name__ == "__main__":
    main()
