"""The GPU check script (benchmarks/gpu_check.py) at its quick sizes on the CPU: it must keep running
here, since CI has no GPU and the check is only worth something if it works the day a GPU is lent."""

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_quick_on_cpu(tmp_path, capsys):
    gpu_check = load_gpu_check()
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    checks = {row["check"]: row for row in table["rows"]}
    assert checks["engine = reference (float64, cpu)"]["status"] == "PASS"
    assert checks["engine = reference (float32, cpu)"]["status"] == "PASS"
    assert any(name.startswith("ACDC kept edges") for name in checks)
    timings = [row for name, row in checks.items() if name.startswith("s/edge test")]
    assert len(timings) == 4 and all("ms/test" in row["result"] for row in timings)
    assert "whole run <=" in checks["s/edge test IOI-sized 100x15, batched"]["result"]


def test_gpu_check_refuses_missing_cuda(capsys):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU machine: nothing to refuse")
    gpu_check = load_gpu_check()
    assert gpu_check.main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
