"""bench/gpu_check.sh, the one prepared device script: it runs end to end on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import e2e  # noqa: E402
import sparsity  # noqa: E402
import train_step  # noqa: E402


@pytest.mark.slow
def test_gpu_check_script_runs_on_the_cpu_with_tiny_sizes(tmp_path):
    # The script calls `python`: this interpreter's, as on a machine with the venv activated.
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    result = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), str(tmp_path / "out")],
        env={**os.environ, "SMOKE": "1", "PATH": path}, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, (out + result.stderr)[-4000:]
    assert "gpu_check: 0 section(s) failed" in out
    assert (tmp_path / "out" / "gpu_check.log").read_text() == out
    # bench/e2e.py: every row, through the trainer's loop, as ratios to both baselines.
    e2e_rates = json.loads((tmp_path / "out" / "e2e.json").read_text())["results"]["r18_cifar32"]
    assert set(e2e.ROWS) <= set(e2e_rates) and all(e2e_rates[r] > 0 for r in e2e.ROWS)
    ceiling, lightly = e2e_rates["ceiling"], e2e_rates["lightly-style"]
    for row in e2e.ROWS:  # the printed ratios are the measured rates' own ratios
        rate = e2e_rates[row]
        assert f"| {row} | {rate:,.1f} | {rate / ceiling:.2f}x | {rate / lightly:.2f}x |" in out
    # bench/train_step.py: the distillation pair, eager (compiled only on the GPU machine).
    rows = [line for line in out.splitlines() if line.startswith("| ") and "x |" in line]
    steps = [r.split(" | ")[0] for r in rows if r.split(" | ")[0][2:] in train_step.WORKLOADS]
    assert steps == ["| simclr_r18", "| distill_r50_r18"]
    assert "distillation MFU (teacher FLOPs counted) / student SimCLR MFU:" in out
    loaders = json.loads((tmp_path / "out" / "loaders.json").read_text())["results"]
    assert set(loaders) == {"selfsup memory", "selfsup ffcv + device decode"}
    assert "| save | " in out and "| load | " in out  # bench/checkpoint.py
    assert "| resnet18 | " in out and "training stall per checkpoint" in out  # sync vs async
    assert sparsity.CPU_LINE in out
    monitor = json.loads((tmp_path / "out" / "monitor.json").read_text())  # bench/monitor.py
    assert monitor["t_measure"] > 0 and 0 < monitor["share"] < 1 and len(monitor["knn"]) == 2
    assert "| share of training time, one measurement per epoch" in out
