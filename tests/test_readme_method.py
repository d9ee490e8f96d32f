"""The README's "Adding a method" example, as printed: its two code blocks are written into a copy
of the package at the paths their first lines name, then ``circuitfind method=random_ranking`` runs
it and ``circuitfind-report`` draws it, in a child process that imports the copy."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from circuitfind.methods.spec import SPECS
from circuitfind.report import report
from circuitfind.runs.pipeline import run

from conftest import config

ROOT = Path(__file__).resolve().parents[1]

# The child imports circuitfind from the copy: the editable install's finder (which maps
# circuitfind to this checkout) is taken off the import path first.
CHILD = """
import sys
sys.meta_path = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path.insert(0, sys.argv[1])
import circuitfind
assert circuitfind.__file__.startswith(sys.argv[1]), circuitfind.__file__
command, sys.argv = sys.argv[2], ["circuitfind", *sys.argv[3:]]
if command == "run":
    from circuitfind.cli import main
else:
    from circuitfind.report_cli import main
main()
"""


def readme_method_blocks() -> dict[str, str]:
    """Each code block of the README's "Adding a method" section by the path its first line names."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Adding a method"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```(?:python|yaml)\n(.*?)```", section, re.S)
    return {re.match(r"# (\S+)", block)[1]: block for block in blocks}


def test_the_readme_names_where_each_file_goes():
    assert sorted(readme_method_blocks()) == ["configs/method/random_ranking.yaml",
                                              "src/circuitfind/methods/specs/random_ranking.py"]
    assert (ROOT / "configs" / "method").is_dir() and (ROOT / "src" / "circuitfind" / "methods" / "specs").is_dir()


def test_the_readme_method_as_printed_runs_here_and_is_reported(tmp_path):
    """The quick twin of the test below: the printed module, imported as the package module its path
    names, and the printed config, through the pipeline and the report in this process."""
    blocks = readme_method_blocks()
    module_file = tmp_path / "random_ranking.py"
    module_file.write_text(blocks["src/circuitfind/methods/specs/random_ranking.py"])
    name = "circuitfind.methods.specs.random_ranking"
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, module_file))
    sys.modules[name] = module
    try:
        module.__spec__.loader.exec_module(module)  # registers its spec
        cfg = config("task=tracr_proportion", "corruption=zero")
        cfg.method = OmegaConf.create(blocks["configs/method/random_ranking.yaml"])
        summary = run(cfg, tmp_path / "run")
        assert (summary["method"], summary["parameter"], summary["n_edges_kept"]) == ("random_ranking", 3, 3)
        result = report([tmp_path / "run"], tmp_path / "report")
        assert set(result["aucs"].method) == {"random_ranking"} and len(result["points"]) == summary["n_edges_total"] + 1
    finally:
        SPECS.pop("random_ranking", None)
        sys.modules.pop(name, None)


@pytest.mark.slow  # two child processes import torch; quick twin: the test above
def test_the_readme_method_runs_through_the_cli_and_the_report_as_printed(tmp_path):
    copy = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", copy / "src", ignore=ignore)
    shutil.copytree(ROOT / "configs", copy / "configs", ignore=ignore)
    (copy / "src" / "circuitfind" / "configs").symlink_to(copy / "configs")  # as the install maps it
    for path, block in readme_method_blocks().items():
        assert not (copy / path).exists(), path  # the README adds a method, it does not edit one
        (copy / path).write_text(block)

    def child(*arguments):
        return subprocess.run([sys.executable, "-c", CHILD, str(copy / "src"), *arguments], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    run = tmp_path / "run"
    done = child("run", "method=random_ranking", "task=tracr_proportion", "corruption=zero", "progress=false",
                 "draw=false", f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["method"], summary["parameter_name"], summary["parameter"]) == ("random_ranking", "k", 3)
    assert summary["n_edges_kept"] == 3 and summary["method_details"] == {"seed": 0}
    assert len(pd.read_csv(run / "curve.csv")) == summary["n_edges_total"] + 1  # every k from all to none

    reported = child("report", str(run), "--out", str(tmp_path / "report"))
    assert reported.returncode == 0, reported.stderr[-2000:]
    aucs = pd.read_csv(tmp_path / "report" / "auc.csv")
    assert set(aucs.method) == {"random_ranking"} and set(aucs.level) == {"edge", "node"}
    assert "random edges" in reported.stdout or "random_ranking" in reported.stdout
    assert (tmp_path / "report" / "roc_tracr_proportion.png").is_file()
