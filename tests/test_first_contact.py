"""What a new user meets first: a fast --help/--version, bad input and file-system trouble refused in
one line (exit 2) before torch is imported, the threads setting, timings, and a summary line that
says what it counted."""

import errno
import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from circuitfind.cli import format_summary
from circuitfind.runs.pipeline import run
from circuitfind.runs.threads import SMALL_WORK, choose_threads
from circuitfind.runs.validate import ConfigError, check_config, check_output_folder, compose_config

from conftest import config

# Runs circuitfind's main() and then reports which heavy modules it imported.
MAIN = textwrap.dedent("""
    import json, sys
    from circuitfind.cli import main
    sys.argv = ["circuitfind"] + json.loads(sys.argv[1])
    try:
        main()
    finally:
        heavy = sorted(m for m in ("torch", "transformer_lens", "circuitfind.runs.pipeline") if m in sys.modules)
        print("IMPORTED", json.dumps(heavy), file=sys.stderr)
""")


def circuitfind(*args, cwd, prelude: str = ""):
    """circuitfind ARGS in a subprocess; stderr without the IMPORTED line, and what was imported."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", prelude + MAIN, json.dumps(list(args))], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    lines = result.stderr.splitlines()
    imported = json.loads(lines[-1].split(" ", 1)[1]) if lines and lines[-1].startswith("IMPORTED") else None
    errors = [line for line in lines[:-1] if line.startswith("circuitfind") or "Traceback" in line]
    return result, errors, imported


def test_help_describes_circuitfind_without_importing_torch(tmp_path):
    result, _, imported = circuitfind("--help", cwd=tmp_path)
    assert result.returncode == 0 and imported == []
    for text in ("config groups", "tracr_reverse", "method=sp settings", "epochs=3000", "threads=auto",
                 "data=paper", "examples:", "CIRCUITFIND_GPT2_TOKENIZER", "method=eap_ig settings", "steps=5",
                 "EAP-IG", "model.activation_device", "tracr_token_plus_index  ground_truth=program"):
        assert text in result.stdout, text
    assert not (tmp_path / "outputs").exists()


def test_help_read_by_a_reader_that_stops_early_prints_no_traceback(tmp_path):
    """``circuitfind --help | head``: a pipe whose reader has gone is not an error (the reader here
    closes its end at once, so every write meets a closed pipe)."""
    command = f"{sys.executable} -m circuitfind.cli --help | (exec 0<&-; sleep 1)"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


def test_version_names_circuitfind_and_its_dependencies_without_importing_torch(tmp_path):
    result, _, imported = circuitfind("--version", cwd=tmp_path)
    assert result.returncode == 0 and imported == []
    lines = result.stdout.splitlines()
    assert lines[0] == f"circuitfind {version('circuitfind')}"
    assert f"  torch {version('torch')}" in lines and f"  transformer-lens {version('transformer-lens')}" in lines


@pytest.mark.parametrize("args, message", [
    (["task=nope"], "unknown task 'nope'; choose one of"),
    (["tau=abc"], "tau must be a positive number, got 'abc'"),
    (["model=nope"], "unknown model 'nope'"),
    (["threads=0"], "threads must be auto or a positive integer, got 0"),
    (["task=induction", "task.n_prompts=0"], "task.n_prompts must be a positive integer, got 0"),
    (["method=sp", "method.epochs=-1"], "epochs must be a non-negative integer, got -1"),
    (["sed=1"], "sed is not a setting; did you mean seed? the top-level keys: checkpoint, corruption, debug"),
    (["task=induction", "task.nprompts=9"], "task.nprompts is not a setting; did you mean task.n_prompts? task's "
                                            "keys: ground_truth, n_prompts, name, seq_len, span_len, sweeps, tau"),
    (["model.name=nosuchmodel"], "task tracr_reverse runs on its own compiled model (model=tracr_reverse), not "
                                 "model=nosuchmodel"),
    (["task=pairs", "task.path=PAIRS", "model.name=gtp2"], "model.name='gtp2' is not a TransformerLens model "
                                                           "name (did you mean gpt2?)"),
    (["method=eap", "method.objective=metric"], "metric null (task tracr_reverse's default) is a divergence from "
                                                "the unpatched model"),
    (["task=pairs"], "task=pairs needs task.path=<a CSV, JSON or JSONL file of prompt pairs>"),
    (["method=eap", "tau=0.1"], "tau is ACDC's setting; method eap does not read it"),  # not silently ignored
])
def test_bad_input_is_refused_before_torch_is_imported(tmp_path, args, message):
    pairs = Path(__file__).resolve().parents[1] / "examples" / "ioi_pairs.csv"
    result, errors, imported = circuitfind(*(a.replace("PAIRS", str(pairs)) for a in args), cwd=tmp_path)
    assert result.returncode == 2 and imported == [], result.stderr
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not (tmp_path / "outputs").exists()  # nothing written for a config that cannot run


def _one_line_exit_2(result, errors, imported, message):
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.stderr, result.stderr
    assert imported == []


def test_outputs_that_is_a_file_gets_one_line(tmp_path):
    (tmp_path / "outputs").write_text("not a folder")
    _one_line_exit_2(*circuitfind(cwd=tmp_path), "outputs is a file, not a folder")


def test_a_run_dir_that_is_a_file_gets_one_line(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    _one_line_exit_2(*circuitfind(f"hydra.run.dir={tmp_path}/run", cwd=tmp_path), "is a file, not a folder")


def test_a_sweep_dir_under_a_file_gets_one_line(tmp_path):
    (tmp_path / "sweeps").write_text("not a folder")
    _one_line_exit_2(*circuitfind("-m", "tau=0.01,0.1", f"hydra.sweep.dir={tmp_path}/sweeps/a", cwd=tmp_path),
                     "is a file, not a folder")


def test_a_folder_without_write_permission_gets_one_line(tmp_path):
    # /sys refuses new folders even to root (chmod does not stop root, so it cannot stand in here)
    try:
        os.mkdir("/sys/circuitfind-test")
    except OSError:
        pass
    else:
        os.rmdir("/sys/circuitfind-test")
        pytest.skip("/sys accepts new folders here")
    result, errors, imported = circuitfind("hydra.run.dir=/sys/circuitfind-test/run", cwd=tmp_path)
    _one_line_exit_2(result, errors, imported, "cannot write run folder /sys/circuitfind-test/run:")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_working_folder_gets_one_line(tmp_path):
    os.chmod(tmp_path, 0o555)
    try:
        _one_line_exit_2(*circuitfind(cwd=tmp_path), "permission denied")
    finally:
        os.chmod(tmp_path, 0o755)


def test_check_output_folder_names_the_reason(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "probe"))
    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(ConfigError, match="no space left on the device"):
        check_output_folder(tmp_path / "run")


# The disk fills up while the run writes edges.csv.
DISK_FULL = textwrap.dedent("""
    import errno, circuitfind.core.files as files
    _write = files.atomic_write
    def atomic_write(path, write):
        if path.name == "edges.csv":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        _write(path, write)
    files.atomic_write = atomic_write
""")


def test_a_full_disk_gets_one_line_and_a_later_success_clears_the_error_in_a_job(tmp_path, monkeypatch, capsys):
    """The quick twin of the next test: the same job, in this process."""
    import circuitfind.core.files as files
    from circuitfind.cli import run_job
    write = files.atomic_write

    def disk_full(path, fill):
        if path.name == "edges.csv":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, fill)
    monkeypatch.setattr(files, "atomic_write", disk_full)
    with pytest.raises(SystemExit) as stop:
        run_job(config(), tmp_path)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"circuitfind: error: no space left on the device ({tmp_path / 'edges.csv'})"]
    assert "No space left on device" in (tmp_path / "error.txt").read_text()
    monkeypatch.setattr(files, "atomic_write", write)
    assert run_job(config(), tmp_path)["n_edges_kept"] == 15
    assert not (tmp_path / "error.txt").exists()


@pytest.mark.slow
def test_a_full_disk_gets_one_line_and_a_later_success_clears_the_error(tmp_path):
    args = ("progress=false", f"hydra.run.dir={tmp_path}/run")
    result, errors, _ = circuitfind(*args, cwd=tmp_path, prelude=DISK_FULL)
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert "no space left on the device" in errors[0] and "Traceback" not in result.stderr
    assert "No space left on device" in (tmp_path / "run" / "error.txt").read_text()
    result, errors, _ = circuitfind(*args, cwd=tmp_path)
    assert result.returncode == 0 and errors == [], result.stderr
    assert (tmp_path / "run" / "summary.json").is_file() and not (tmp_path / "run" / "error.txt").exists()


# ---- threads --------------------------------------------------------------------------------

def test_auto_threads_is_one_for_small_ops_or_a_busy_machine_and_torch_default_otherwise():
    big = SMALL_WORK
    assert choose_threads("auto", big - 1, default=8, cores=8, others=0)[0] == 1  # ops too small to split
    assert choose_threads("auto", big, default=8, cores=8, others=0)[0] == 8  # torch's default
    assert choose_threads("auto", big, default=8, cores=8, others=3)[0] == 5  # the cores the others leave
    assert choose_threads("auto", big, default=2, cores=2, others=4)[0] == 1  # four busy loops on two cores
    assert choose_threads("auto", big, default=2, cores=2, others=1)[0] == 1
    assert choose_threads("auto", big, default=1, cores=8, others=0)[0] == 1  # OMP_NUM_THREADS=1
    assert choose_threads(3, 10, default=8, cores=8, others=9) == (3, "threads=3 was set")
    used, reason = choose_threads("auto", 5_760, default=2, cores=2, others=0)
    assert used == 1 and "5,760 activations" in reason


def test_the_work_per_op_is_the_larger_of_the_blocks_and_the_unembedding():
    from types import SimpleNamespace

    from circuitfind.runs.threads import activations_per_forward

    def problem(prompts, positions, d_model, d_vocab, read=1):
        data = SimpleNamespace(clean=torch.zeros(prompts, positions), positions=torch.zeros(prompts, read))
        cfg = SimpleNamespace(d_model=d_model, d_vocab=d_vocab, d_vocab_out=d_vocab)
        return SimpleNamespace(data=lambda split: data, task=SimpleNamespace(model=SimpleNamespace(cfg=cfg)))

    # a 64-wide GPT-2 on six prompt pairs: small blocks, but 50,257 logits per prompt
    assert activations_per_forward(problem(6, 14, 64, 50_257))["activations"] == 6 * 50_257
    # induction_2l-like: the blocks are the larger op
    assert activations_per_forward(problem(50, 48, 256, 100, read=47))["activations"] == 50 * 48 * 256
    # tracr: both tiny
    assert activations_per_forward(problem(4, 5, 17, 6, read=4))["activations"] < SMALL_WORK


def test_a_run_records_its_threads_and_timings_and_restores_torch(tmp_path):
    before = torch.get_num_threads()
    summary = run(config("threads=2"), tmp_path / "two")
    assert torch.get_num_threads() == before
    assert summary["threads"]["setting"] == 2 and summary["threads"]["used"] == 2
    summary = run(config(), tmp_path / "auto")  # tracr-reverse: ops of a few hundred activations
    threads = summary["threads"]
    assert threads["used"] == 1 and threads["activations_per_forward"] < SMALL_WORK and "too small" in threads["reason"]
    work = threads["work"]
    assert work["activations"] == work["prompts"] * work["positions"] * work["d_model"]
    timings = summary["timings"]
    assert list(timings) == ["model", "caches", "method", "evaluation", "writing", "drawing"]
    assert all(t >= 0 for t in timings.values()) and sum(timings.values()) <= summary["wall_s"] + 0.01
    on_disk = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert on_disk["timings"] == timings and on_disk["threads"] == summary["threads"]


def test_threads_is_not_part_of_a_runs_identity(tmp_path):
    run(config("threads=1"), tmp_path)
    assert run(config("threads=2"), tmp_path).get("reused") is True


# ---- what the summary line says -------------------------------------------------------------

SUMMARY = dict(task="tracr_reverse", method="acdc", corruption="zero", graph="qkv", n_edges_kept=15,
               n_edges_total=106, metric="kl", metric_circuit=4.3e-14, edge_tpr=1.0, edge_fpr=0.0, wall_s=0.1)


def test_the_summary_line_counts_nodes_on_the_node_graph():
    assert "kept 15/106 edges" in format_summary(SUMMARY)
    assert "kept 7/10 nodes" in format_summary(dict(SUMMARY, graph="nodes", n_edges_kept=7, n_edges_total=10))


def test_tiny_negative_divergence_prints_as_zero_but_real_values_do_not():
    assert ", kl 0," in format_summary(dict(SUMMARY, metric_circuit=-4.7e-17))
    assert ", kl 4.3e-14," in format_summary(SUMMARY)
    assert ", logit_diff -4.7e-17," in format_summary(dict(SUMMARY, metric="logit_diff", metric_circuit=-4.7e-17))
    assert ", kl -0.01," in format_summary(dict(SUMMARY, metric_circuit=-0.01))  # not rounding: shown


def test_the_summary_names_the_prompt_set(tmp_path):
    summary = run(config("task=tracr_proportion", "task.data=valid"), tmp_path)
    assert summary["data"] == "valid"
    assert format_summary(summary).startswith("tracr_proportion (valid prompts) acdc")
    assert format_summary(SUMMARY).startswith("tracr_reverse acdc")  # one prompt set: nothing to name


# ---- checks a composed config passes or fails without torch --------------------------------

def test_every_shipped_option_passes_the_light_checks():
    from pathlib import Path

    from circuitfind.runs.validate import group_options
    needs = {"task=pairs": [f"task.path={Path(__file__).parents[1] / 'examples' / 'ioi_pairs.csv'}"],
             "model=tracr_proportion": ["task=tracr_proportion"]}  # a compiled program runs its own task only
    for group in ("task", "model", "method", "corruption", "graph"):
        for option in group_options(group):
            check_config(compose_config(f"{group}={option}", *needs.get(f"{group}={option}", [])))
    with pytest.raises(ConfigError, match="task=pairs needs task.path"):
        check_config(compose_config("task=pairs"))


# ---- SP says when its gates barely moved ------------------------------------------------------

def test_sp_warns_when_its_gates_barely_moved(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="circuitfind"):
        summary = run(config("method=sp", "method.epochs=20"), tmp_path)
    assert len(summary["warnings"]) == 1 and summary["warnings"] == [summary["method_details"]["warning"]]
    warning = summary["warnings"][0]
    assert "gates barely moved" in warning and "raise method.epochs or method.lr" in warning
    assert warning in caplog.text


def test_sp_trained_long_enough_does_not_warn(tmp_path):
    summary = run(config("method=sp", "method.epochs=200", "method.lr=0.05"), tmp_path)
    assert summary["warnings"] == [] and summary["method_details"]["warning"] is None


def test_stalled_gates_warning_counts_gates_near_their_start():
    from circuitfind.methods.sp import stalled_gates_warning
    start = 1.6
    assert stalled_gates_warning(torch.tensor([1.6, 1.5, 1.7, -2.0]), start, 100, 1e-3) is not None
    assert stalled_gates_warning(torch.tensor([1.6, 0.5, 3.0, -2.0]), start, 100, 1e-3) is None


def test_the_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    from pathlib import Path
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (Python API)", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("15 1.0 {'model'") and printed[1].startswith("15 ")
    assert (tmp_path / "outputs/api/tracr_reverse/summary.json").is_file()
