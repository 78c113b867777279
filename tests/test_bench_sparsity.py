"""bench/sparsity.py: it runs, names what a CPU lacks, and times the same zeros on both paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import sparsity  # noqa: E402


def test_the_benchmarked_weights_are_two_of_four_sparse():
    weight = sparsity.two_four(torch.randn(64, 256))
    assert ((weight.reshape(64, -1, 4) == 0).sum(-1) == 2).all()


def test_bench_runs_on_the_cpu_and_says_why_it_times_masked_dense_only(tmp_path):
    out = tmp_path / "rows.json"
    result = subprocess.run(
        [sys.executable, str(BENCH / "sparsity.py"), "--smoke", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == sparsity.CPU_LINE
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "x |" in line]
    assert len(rows) == len(sparsity.VIT_MLP) + len(sparsity.R50_1X1)
    assert out.read_text().count('"ratio"') == len(rows)
