"""Config checks that need no model, no torch and no TransformerLens: the CLI runs them first.

Importing torch and TransformerLens takes 10-40 s on a shared machine, so every check that can be
made from the composed config alone lives here, with nothing heavier than OmegaConf imported:

- names (task, method, corruption, graph): a valid name is one with a config file in
  ``circuitfind.configs/<group>/``, so a new task or method is valid as soon as its config exists
  (``model=`` options are checked on the command line; ``model.name`` of ``model=hf`` is any
  TransformerLens name, checked when the model loads);
- numbers: ``seed``, ``threads``, the task's prompt counts and each method's parameters (its
  spec's parameter dataclass, ``methods/spec.py``; the methods call the same checks);
- ``threshold=paper``: a sweep resolved for this task and method;
- the output folder: it can be created and written (``check_output_folder``).

Each check raises ``ConfigError`` with a one-line message; the CLI prints it and exits with 2.
"""

from __future__ import annotations

import errno
import os
import uuid
from importlib.resources import files
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .circuit_json import CircuitFileError, read_circuit_file
from ..methods.spec import get_spec, load_specs
from ..models.view import backend
from ..tasks.pairs_file import PairsFileError, read_pairs

class ConfigError(ValueError):
    """A config value that is wrong before anything is loaded."""


def group_options(group: str) -> list[str]:
    """The options of a config group: the names of its YAML files."""
    folder = files("circuitfind.configs") / group
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")) if folder.is_dir() else []


def compose_config(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
    """The config ``circuitfind <overrides>`` would run, composed without running it (notebooks,
    benchmarks, figures)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="circuitfind.configs", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


# ---- numbers -----------------------------------------------------------------------------------

def _is_int(value, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= minimum


def check_threads(threads) -> None:
    if threads != "auto" and not _is_int(threads, 1):
        raise ValueError(f"threads must be auto or a positive integer, got {threads!r}")


# ---- the whole config --------------------------------------------------------------------------

def _choice(kind: str, value, group: str) -> None:
    options = group_options(group)
    if value not in options:
        raise ConfigError(f"unknown {kind} {value!r}; choose one of {', '.join(options)}")


def method_params(cfg: DictConfig, spec=None):
    """The method's typed, checked parameters (its spec's dataclass): its config group's keys and
    the top-level keys the spec reads (ACDC's tau, SP's seed)."""
    spec = spec or get_spec(cfg.method.name)
    try:
        return spec.check(OmegaConf.to_container(cfg.method, resolve=True),
                          {key: OmegaConf.select(cfg, key) for key in spec.top_level})
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None


def _check_task(cfg: DictConfig) -> None:
    for key in ("n_prompts", "seq_len", "span_len"):
        value = OmegaConf.select(cfg, f"task.{key}")
        if value is not None and not _is_int(value, 1):
            raise ConfigError(f"task.{key} must be a positive integer, got {value!r}")


def check_paper_sweep(cfg: DictConfig) -> None:
    """threshold=paper's values are resolved once per command, for the task and method Hydra composed
    first (configs/threshold/paper.yaml): refuse jobs that would run another task's values."""
    here = f"{cfg.task.name}/{cfg.method.name}"
    swept_for = OmegaConf.select(cfg, "threshold.swept_for")
    if swept_for is None:
        raise ConfigError(f"threshold=paper is a sweep: run it with -m (circuitfind -m task={cfg.task.name} "
                          f"method={cfg.method.name} threshold=paper)")
    if swept_for != here:
        raise ConfigError(f"threshold=paper sweeps one task and one method per command; this job ({here}) got the "
                          f"values of {swept_for}: run it as its own sweep")
    spec = get_spec(cfg.method.name)
    if spec.sweep.needs_task_values and OmegaConf.select(cfg, f"task.sweeps.{spec.name}") is None:
        raise ConfigError(f"threshold=paper has no {spec.label} sweep for task {cfg.task.name} "
                          f"(task.sweeps.{spec.name} is not set)")


# Configs already checked (their text without Hydra's own node) -> their method's typed parameters.
# The command line checks a run's config before Hydra starts, the job and the pipeline then ask for
# the same config again: each setting is validated once, by the spec that defines it.
_CHECKED: dict[str, object] = {}
_MAX_CHECKED = 256


def check_config(cfg: DictConfig):
    """Every check a composed config can pass or fail without loading anything; returns the
    method's typed parameters (``method_params``).  A config is checked once per process."""
    key = OmegaConf.to_yaml({k: v for k, v in cfg.items() if k != "hydra"})
    if key not in _CHECKED:
        if len(_CHECKED) >= _MAX_CHECKED:
            _CHECKED.clear()
        _CHECKED[key] = _check_config(cfg)
    return _CHECKED[key]


def _check_config(cfg: DictConfig):
    _choice("task", cfg.task.name, "task")
    specs = load_specs()  # a method is one with a spec (and, to be chosen by name, a config file)
    if cfg.method.name not in specs:
        raise ConfigError(f"unknown method {cfg.method.name!r}; choose one of {', '.join(sorted(specs))}")
    _choice("corruption", cfg.corruption.name, "corruption")
    _choice("graph", cfg.graph.granularity, "graph")
    _check_task(cfg)
    spec = get_spec(cfg.method.name)
    params = method_params(cfg, spec)
    check_method_metric(cfg, spec, params)
    check_model_name(cfg)
    if OmegaConf.select(cfg, "threshold.name") == "paper" and spec.sweep is not None:
        check_paper_sweep(cfg)
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise ConfigError(f"seed must be an integer, got {cfg.seed!r}")
    _check_shuffle_positions(cfg)
    activation_device = OmegaConf.select(cfg, "model.activation_device", default="auto")
    if activation_device not in ("auto", "model", "cpu"):  # engine.ACTIVATION_DEVICES (engine/ needs torch)
        raise ConfigError(f"model.activation_device must be auto, model or cpu, got {activation_device!r}")
    try:
        check_threads(cfg.get("threads", "auto"))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if cfg.get("draw", "auto") not in ("auto", True, False):  # draw.DRAW_OPTIONS (draw.py needs matplotlib)
        raise ConfigError(f"draw must be auto, true or false, got {cfg.get('draw')!r}")
    _check_files(cfg)
    return params


def _check_shuffle_positions(cfg: DictConfig) -> None:
    shuffle = OmegaConf.select(cfg, "corruption.shuffle_positions", default=False)
    if not isinstance(shuffle, bool):
        raise ConfigError(f"corruption.shuffle_positions must be true or false, got {shuffle!r}")
    # zero ablation has no corrupted run to shuffle: a tracr task's default is moot on another model
    if shuffle and cfg.corruption.name != "zero" and OmegaConf.select(cfg, "model.kind") != "tracr":
        raise ConfigError(f"corruption.shuffle_positions needs separate token and positional embeddings (the tracr "
                          f"models); model {cfg.model.name} has none")


# task.ground_truth values that name a task's own circuit rather than a file (tracr: the paper's or the program's).
GROUND_TRUTH_WORDS = ("paper", "program")


def ground_truth_path(cfg: DictConfig) -> str | None:
    """The circuit file ``task.ground_truth`` names, or None (the task's own circuit, if any)."""
    value = OmegaConf.select(cfg, "task.ground_truth")
    return None if value is None or value in GROUND_TRUTH_WORDS else str(value)


def _check_files(cfg: DictConfig) -> None:
    """The files a run reads, parsed now (no torch, no model) so that a bad one fails at once."""
    try:
        if cfg.task.name == "pairs":
            if not OmegaConf.select(cfg, "task.path"):
                raise ConfigError("task=pairs needs task.path=<a CSV, JSON or JSONL file of prompt pairs>")
            read_pairs(cfg.task.path, cfg.metric)
        if ground_truth_path(cfg) is not None:
            read_circuit_file(ground_truth_path(cfg))
    except (PairsFileError, CircuitFileError) as error:
        raise ConfigError(str(error)) from None


# ---- the output folder -------------------------------------------------------------------------

def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_folder(folder: Path | str, create: bool = True) -> None:
    """The run folder can be made and written: raise one ``ConfigError`` line that names the
    problem (a file where a folder must be, no permission, a read-only or full disk) otherwise.
    ``create``: make the folder, as Hydra would a moment later; else probe its nearest existing
    parent (a sweep's folder may be named by the time Hydra starts it)."""
    folder = Path(folder)
    existing = _first_existing(folder.absolute())
    if not existing.is_dir():
        raise ConfigError(f"cannot use run folder {folder}: {existing} is a file, not a folder")
    target = folder if create else existing
    probe = target / f".circuitfind-probe-{uuid.uuid4().hex[:8]}"
    try:
        target.mkdir(parents=True, exist_ok=True)
        with open(probe, "w") as f:
            f.write("circuitfind checks that this folder can be written\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        raise ConfigError(f"cannot write run folder {folder}: {describe_os_error(error)}") from None
    finally:
        if probe.parent.is_dir():
            probe.unlink(missing_ok=True)


def describe_os_error(error: OSError) -> str:
    """An OSError in words a user can act on, without a traceback."""
    reason = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
              errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
              errno.EPERM: "operation not permitted (permission)", errno.ENOTDIR: "a file is in the way of a folder",
              errno.EEXIST: "a file is in the way"}.get(error.errno, error.strerror or str(error))
    where = f" ({error.filename})" if error.filename else ""
    return f"{reason}{where}"


# ---- the method against the metric, the model's name, unknown keys -------------------------------
# Metrics measured against the unpatched model (their gradient there is zero).  metric=null is the
# task's default, which is one of them for every task: KL, or l2 on tracr's numerical programs
# (tests/test_first_contact.py checks it on the tasks that build in seconds).
DIVERGENCES = ("kl", "l2")


def check_method_metric(cfg: DictConfig, spec, params) -> None:
    """The method's own check of its parameters against the run's metric (``MethodSpec.check_metric``)."""
    if spec.check_metric is None:
        return
    metric = OmegaConf.select(cfg, "metric")
    name = metric if metric is not None else f"null (task {cfg.task.name}'s default)"
    try:
        spec.check_metric(params, name, metric is None or metric in DIVERGENCES)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def written_down_names() -> dict[str, str]:
    """The hub models circuitfind's model configs name (``configs/model/*.yaml`` of kind hub): their
    config names, repos and repos' last parts (lower case) -> repo, which the loader takes under
    TransformerLens 4 (``models.loading.hub_repo``)."""
    names = {}
    for path in (files("circuitfind.configs") / "model").iterdir():
        if not path.name.endswith(".yaml"):
            continue
        model = OmegaConf.load(str(path))
        if model.get("kind") == "hub" and model.get("repo"):
            repo = str(model.repo)
            for alias in (str(model.get("name", repo)), repo, repo.split("/")[-1]):
                names[alias.lower()] = repo
    return names


def transformer_lens_names() -> dict[str, str] | None:
    """TransformerLens' model names and aliases (lower case) -> official names, read from its
    ``supported_models.py`` without importing TransformerLens (seconds of torch); None where that
    file is not found (then the name is checked as the model loads)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("transformer_lens")
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / "supported_models.py"
    if not path.is_file():
        return None
    module_spec = importlib.util.spec_from_file_location("_circuitfind_tl_supported_models", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        official, aliases = module.OFFICIAL_MODEL_NAMES, module.MODEL_ALIASES
    except Exception:  # another TransformerLens layout: leave the check to the loader
        return None
    names = {}
    for name in official:
        names.update({alias.lower(): name for alias in aliases.get(name, [])})
        names[name.lower()] = name
    return names


def check_model_name(cfg: DictConfig) -> None:
    """``model.name`` where the config alone can tell it is wrong: a compiled tracr program runs only
    its own task, and ``model=hf`` takes TransformerLens' names and aliases."""
    kind, name = OmegaConf.select(cfg, "model.kind"), OmegaConf.select(cfg, "model.name")
    if kind == "tracr" and name != cfg.task.name:
        raise ConfigError(f"task {cfg.task.name} runs on its own compiled model (model={cfg.task.name}), "
                          f"not model={name}")
    if kind != "hf" or not name or (Path(str(name)) / "config.json").exists():
        return
    names = transformer_lens_names()
    if names is not None and backend() == "tl4":
        names = {**names, **written_down_names()}  # TransformerLens 4's list has no short aliases
    if names is None or str(name).lower() in names:
        return
    import difflib

    near = difflib.get_close_matches(str(name).lower(), list(names), n=1, cutoff=0.6)
    hint = f" (did you mean {names[near[0]]}?)" if near else ""
    raise ConfigError(f"model.name={name!r} is not a TransformerLens model name{hint}; see "
                      "transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES")


def unknown_key(key: str, overrides: list[str]) -> str:
    """The one line for ``key=...`` that names no setting: the keys there are, and the nearest."""
    import difflib

    parent, _, leaf = key.rpartition(".")
    kept = [o for o in overrides if o.lstrip("+~").partition("=")[0] != key]
    try:
        cfg = compose_config(*kept)
        node = OmegaConf.select(cfg, parent) if parent else cfg
    except Exception:  # another override is wrong too: list the defaults' keys
        cfg = compose_config()
        node = OmegaConf.select(cfg, parent) if parent else cfg
    keys = sorted(str(k) for k in node) if OmegaConf.is_dict(node) else []
    near = difflib.get_close_matches(leaf, keys, n=1, cutoff=0.5)
    where = f"{parent}'s keys" if parent else "the top-level keys"
    hint = f"did you mean {parent + '.' if parent else ''}{near[0]}? " if near else ""
    return f"{key} is not a setting; {hint}{where}: {', '.join(keys)}"
