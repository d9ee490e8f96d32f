"""Method specs: one declaration per method, read everywhere; configs checked without torch."""

import dataclasses
import inspect
import subprocess
import sys
from dataclasses import dataclass
from importlib.resources import files

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from circuitfind.core.graph import EdgeMask
from circuitfind.methods.result import CurvePoint, MethodResult
from circuitfind.methods.spec import SPECS, MethodSpec, get_spec, is_int, load_specs, method_labels, register
from circuitfind.runs.pipeline import ConfigError, run, validate
from circuitfind.runs.validate import method_params
from circuitfind.report import report

from conftest import config


def test_every_spec_matches_its_config_file_and_its_run_function():
    """The spec's parameters are exactly the config group's keys (plus its top-level keys) and the
    run function's keyword arguments: nothing swallowed, nothing unset."""
    for name, spec in load_specs().items():
        yaml = OmegaConf.load(str(files("circuitfind.configs") / "method" / f"{name}.yaml"))
        fields = {f.name for f in dataclasses.fields(spec.params)}
        assert set(yaml) - {"name"} | set(spec.top_level) == fields, name
        signature = inspect.signature(spec.function()).parameters
        assert not any(p.kind == p.VAR_KEYWORD for p in signature.values()), name
        expected = fields | {"problem"} | ({"checkpointer"} if spec.checkpoints else set())
        assert set(signature) == expected, name


def test_configs_are_checked_without_importing_torch():
    code = ("import sys; from circuitfind.methods.spec import get_spec; "
            "spec = get_spec('acdc'); spec.check({'name': 'acdc'}, {'tau': 0.01})\n"
            "try:\n    spec.check({}, {'tau': -1})\nexcept ValueError as e:\n    print(e)\n"
            "print(sorted(m for m in ('torch', 'transformer_lens') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["tau must be a positive number, got -1", "[]"]


def test_tau_stays_the_shorthand_for_acdcs_threshold():
    params = method_params(config("method=acdc", "task=ioi", "tau=0.01"), get_spec("acdc"))
    assert params.tau == 0.01 and params.batch_edges == "auto"
    assert method_params(config("method=sp", "seed=4"), get_spec("sp")).seed == 4


def test_unknown_method_settings_are_refused():
    with pytest.raises(ConfigError, match="method hisp has no parameter 'tau'; it has k, max_points, objective"):
        validate(config("method=hisp", "+method.tau=1"))


# ---- a method added in one module (here: this test file), as the README shows ---------------------
@dataclass(frozen=True)
class RandomRankingParams:
    k: int = 3
    seed: int = 0

    def __post_init__(self):
        if not is_int(self.k, 0):
            raise ValueError(f"k must be a non-negative integer, got {self.k!r}")


def random_ranking(problem, k: int = 3, seed: int = 0) -> MethodResult:
    """A baseline: edges in a seeded random order; the top-k for every k is its curve."""
    graph = problem.graph
    scores = torch.rand(graph.n_edges, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    order = scores.argsort(descending=True)

    def top(n: int) -> EdgeMask:
        kept = torch.zeros(graph.n_edges, dtype=torch.bool)
        kept[order[:n]] = True
        return EdgeMask(graph, kept)

    curve = [CurvePoint(n, top(n)) for n in range(graph.n_edges, -1, -1)]
    return MethodResult(graph, scores, top(k), parameter=k, curve=curve, details=dict(seed=seed))


TOY = MethodSpec(name="random_ranking", label="random edges", params=RandomRankingParams,
                 run="test_method_specs:random_ranking", parameter="k", curve="ranking", top_level=("seed",))


@pytest.fixture
def toy_method():
    register(TOY)
    yield TOY
    SPECS.pop(TOY.name)


def test_a_new_method_runs_and_is_reported_from_its_spec_alone(toy_method, tmp_path):
    cfg = config("task=tracr_proportion", "corruption=zero")
    cfg.method = OmegaConf.create({"name": "random_ranking", "k": 4})  # as configs/method/random_ranking.yaml would
    summary = run(cfg, tmp_path / "run")
    assert (summary["method"], summary["parameter_name"], summary["parameter"]) == ("random_ranking", "k", 4)
    assert summary["n_edges_kept"] == 4 and summary["method_details"] == {"seed": 0}
    curve = pd.read_csv(tmp_path / "run" / "curve.csv")
    assert list(curve.parameter) == list(range(38, -1, -1))
    assert not (tmp_path / "run" / "trace.csv").exists()  # no search steps, no trace
    result = report([tmp_path], tmp_path / "report")
    assert set(result["points"].method) == {"random_ranking"} and len(result["points"]) == 39
    assert set(result["aucs"].method) == {"random_ranking"}
    assert method_labels()["random_ranking"] == "random edges"
    with pytest.raises(ConfigError, match="k must be a non-negative integer, got -1"):
        cfg.method.k = -1
        validate(cfg)


def test_a_spec_is_registered_once():
    with pytest.raises(ValueError, match="method 'acdc' is registered twice"):
        register(dataclasses.replace(get_spec("acdc"), label="other"))
    with pytest.raises(ValueError, match="a per_run curve needs a sweep"):
        MethodSpec(name="x", label="x", params=RandomRankingParams, run="m:f", curve="per_run")


# ---- each setting validated once, where it is defined ----------------------------------------
def test_one_command_line_run_checks_tau_once_and_reports_it_as_its_parameter(tmp_path, monkeypatch):
    import json

    from hydra.core.global_hydra import GlobalHydra

    from circuitfind import cli
    from circuitfind.methods.specs import acdc as acdc_spec
    from circuitfind.runs import validate as validate_module

    calls = []
    real = acdc_spec.check_tau
    monkeypatch.setattr(acdc_spec, "check_tau", lambda tau: calls.append(tau) or real(tau))
    monkeypatch.setattr(validate_module, "_CHECKED", {})  # nothing checked yet in this process
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["circuitfind", "task=tracr_reverse", "tau=0.05", "progress=false", "draw=false",
                                      f"hydra.run.dir={tmp_path / 'run'}"])
    try:
        cli.main()
    finally:
        GlobalHydra.instance().clear()
    assert calls == [0.05]  # the command line, the job, the pipeline and ACDC share one check
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["tau"] == summary["parameter"] == 0.05 and summary["parameter_name"] == "tau"


def test_find_circuit_asks_for_tau_rather_than_guess_it():
    from conftest import tiny_model

    import circuitfind

    tokens = torch.zeros(3, 4, dtype=torch.long)
    task = circuitfind.make_task(tiny_model(), tokens, tokens)
    with pytest.raises(ValueError, match=r"ACDC needs tau="):
        circuitfind.find_circuit(task, "acdc")
    with pytest.raises(ValueError, match="tau must be a positive number, got -1"):
        circuitfind.find_circuit(task, "acdc", tau=-1)
