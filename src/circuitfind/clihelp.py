"""``circuitfind --help`` and ``--version``, answered without importing torch.

The help is read from the config files themselves (each group's options, each setting's default and
its comment), so it cannot drift from what a run accepts.  Versions come from package metadata.
"""

from __future__ import annotations

import platform
import re
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files

from . import __version__
from .models.view import describe as describe_backend
from .runs.validate import group_options

# What a version report names besides circuitfind: what decides a run's numbers and its command line.
DEPENDENCIES = ("torch", "transformer-lens", "transformers", "hydra-core", "omegaconf", "numpy", "matplotlib")
# ``key: value   # comment`` at the top level of a config file.
SETTING = re.compile(r"^([a-z_]+):[ \t]*([^#\n]*?)[ \t]*(?:#[ \t]*(.*))?$")
GROUP_HELP = {
    "task": "what the circuit does (prompts, metric, ground-truth circuit); picks its usual model and corruption",
    "model": "the model (tracr, induction_2l, algo_4l and algo_6l ship with the package; gpt2 and attn_only_4l "
             "need the hub or model.pretrained=false)",
    "method": "how the circuit is found (canonical: the task's known circuit)",
    "corruption": "what a removed edge carries",
    "graph": "which edges exist: q/k/v inputs apart, heads whole, or whole nodes",
    "threshold": "paper: the paper's sweep of the method's parameter (with -m)",
    "experiment": "an overlay of settings applied after the defaults (none by default)",
}
EXAMPLES = """\
  circuitfind                                              ACDC on tracr-reverse, zero ablation, tau 0.001
  circuitfind task=tracr_proportion task.data=valid        the other tracr program, on its valid inputs
  circuitfind task=induction tau=0.03                      ACDC on the shipped 2-layer induction model
  circuitfind task=ioi model.pretrained=false method.max_edge_tests=50   IOI on random GPT-2 weights
  circuitfind method=sp method.lambda_reg=1 method.epochs=3000           Subnetwork Probing
  circuitfind method=hisp graph=nodes                      HISP, whole components
  circuitfind method=eap task=induction                    edge attribution patching: every edge scored at once
  circuitfind method=eap_ig method.steps=5                 EAP with integrated gradients
  circuitfind experiment=sp_quick task=tracr_proportion    SP at the quick setting (500 steps, lr 0.01)
  circuitfind -m tau=0.0001,0.001,0.01                     a sweep, one run folder per job
  circuitfind -m method=sp threshold=paper                 the paper's sweep for this task and method
  circuitfind-report outputs/runs                          ROC points, AUC table and plots"""


def _settings(path, block: str | None = None) -> list[tuple[str, str, str]]:
    """(key, default, comment) of each top-level setting of a config file (or of its ``block:``,
    e.g. a task file's ``task:``), as written there."""
    rows, inside = [], block is None
    for line in path.read_text().splitlines():
        if block is not None:
            if not line.startswith(" "):
                inside = line.startswith(f"{block}:")
                continue
            if not inside or line.startswith("   "):
                continue
            line = line[2:]
        match = SETTING.match(line)
        if match and match[1] not in ("name", "defaults", "hydra", "sweeps", "checkpoint", "tau") and match[2]:
            rows.append((match[1], match[2], match[3] or ""))
    return rows


def _table(rows: list[tuple[str, str, str]], indent: str = "  ") -> list[str]:
    width = max((len(f"{k}={v}") for k, v, _ in rows), default=0)
    return [f"{indent}{f'{k}={v}':<{width}}  {c}".rstrip() for k, v, c in rows]


def help_text() -> str:
    configs = files("circuitfind.configs")
    from .methods.spec import load_specs, method_rank  # torch-free: the specs name every method

    specs = sorted((s for s in load_specs().values() if s.name != "canonical"), key=lambda s: method_rank(s.name))
    lines = [f"circuitfind {__version__}: automated circuit discovery ({', '.join(s.label for s in specs)}) "
             "in TransformerLens models",
             "",
             "usage: circuitfind [GROUP=OPTION ...] [KEY=VALUE ...]      one run, in outputs/runs/<task>/<method>/<hash>",
             "       circuitfind -m KEY=A,B [...]                        a sweep: one run per value",
             "       circuitfind --help | --version | --hydra-help",
             "",
             "config groups (one option each; default first):"]
    defaults = dict(re.findall(r"^  - ([a-z]+): ([a-z_0-9]+)", (configs / "config.yaml").read_text(), re.M))
    for group, about in GROUP_HELP.items():
        options = group_options(group)
        default = defaults.get(group)
        ordered = ([default] if default in options else []) + [o for o in options if o != default]
        lines += [f"  {group:<11}{', '.join(ordered)}", f"  {'':<11}  {about}"]
    lines += ["", "settings (KEY=VALUE):", "  tau=<task's>  ACDC threshold (each task sets its default)"]
    lines += _table(_settings(configs / "config.yaml"))
    for spec in specs:
        rows = _settings(configs / "method" / f"{spec.name}.yaml")
        if rows:
            lines += ["", f"method={spec.name} settings (method.KEY=VALUE):"]
            lines += _table(rows)
    lines += ["", "task settings (task.KEY=VALUE; each task's default):"]
    tasks = group_options("task")
    width = max(map(len, tasks)) + 2
    for option in tasks:
        rows = _settings(configs / "task" / f"{option}.yaml", block="task")
        lines.append(f"  {option:<{width}}{'  '.join(f'{k}={v}' for k, v, _ in rows) or '(none)'}")
    lines += ["", "model settings (model.KEY=VALUE):",
              "  model.pretrained=false  the task's model architecture with seeded random weights (offline)",
              "  model.activation_device=auto|model|cpu  where the engine keeps stored activations (auto: on the",
              "                          model's GPU unless they do not fit there, then in host memory)",
              "", "examples:", EXAMPLES, "",
              "Bad input ends with one line on stderr and exit code 2 (debug=true shows the traceback).",
              "Environment: CIRCUITFIND_GPT2_TOKENIZER=<folder with vocab.json and merges.txt> for GPT-2's BPE offline.",
              "Every Hydra override works too (hydra.run.dir=..., hydra.sweep.dir=...); see --hydra-help."]
    return "\n".join(lines)


def version_text() -> str:
    """circuitfind's version and its key dependencies', from package metadata (nothing imported)."""
    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"
    rows = [f"circuitfind {__version__}", f"  python {platform.python_version()}"]
    rows += [f"  {name} {installed(name)}" for name in DEPENDENCIES]
    rows.append(f"  model backend: {describe_backend()}")
    return "\n".join(rows)
