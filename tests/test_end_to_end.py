"""Whole runs through the real entry point: crash and resume, graceful stop, real data."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfsup.cli import main

REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "configs" / "demo.yaml")


def long_overrides(tiny_overrides, run_dir):
    return [*tiny_overrides, f"run_dir={run_dir}", "train.max_steps=40", "checkpoint.every_steps=5"]


def start_training(overrides) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "selfsup", "train", DEMO, *overrides],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_stops_between_steps_with_a_checkpoint(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    process = start_training(long_overrides(tiny_overrides, run))
    wait_for(run / "checkpoints" / "step_000000005", process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    stopped = [line for line in err.splitlines() if "stopped by SIGTERM at step" in line]
    assert len(stopped) == 1, err
    step = int(stopped[0].split(" at step ")[1].split("/")[0])
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step_{step:09d}"
    assert main(["train", DEMO, *long_overrides(tiny_overrides, run)]) == 0
    assert (run / "backbone.pt").is_file()


def test_train_resume_probe_report_through_the_cli(tiny_overrides, data_root, tmp_path, capsys):
    run = tmp_path / "cli_run"
    assert main(["train", DEMO, *tiny_overrides, f"run_dir={run}", "train.max_steps=3"]) == 0
    assert main(["train", DEMO, *tiny_overrides, f"run_dir={run}"]) == 0  # extends 3 -> 6
    assert "resuming from checkpoint" in (run / "train.log").read_text()
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000000006"
    assert main(["probe", str(run), "--data", str(data_root), "--datasets", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert "frozen-feature accuracy" in out and "cifar10" in out
    assert main(["report", str(run)]) == 0
    assert "cifar10 linear" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_cifar10_train_and_probe(shared_data, tmp_path, capsys):
    run = tmp_path / "real"
    overrides = [
        f"run_dir={run}", f"data.path={shared_data.cifar10_jpeg}", "data.train_samples=512",
        "data.batch_size=64", "train.max_steps=4", "checkpoint.every_steps=2",
    ]  # fmt: skip
    assert main(["train", DEMO, *overrides]) == 0
    probe_args = ["train_samples=500", "test_samples=200", "epochs=5", "knn_k=20"]
    assert main(["probe", str(run), "--data", str(shared_data.root), *probe_args]) == 0
    out = capsys.readouterr().out
    assert "cifar10" in out and "fashion_mnist" in out
    report = (run / "report.md").read_text()
    assert "| cifar10 | 500 / 200 |" in report


@pytest.mark.ffcv
def test_train_and_probe_from_beton_files(tiny_overrides, data_root, tmp_path, capsys):
    betons = {}
    for split in ("train", "test"):
        betons[split] = tmp_path / f"cifar10_{split}.beton"
        args = ["data", "write", str(data_root / "cifar-10-batches-py"), str(betons[split])]
        assert main([*args, "--split", split, "--workers", "1"]) == 0
    run = tmp_path / "ffcv_run"
    ffcv = ["data.loader=ffcv", f"data.beton={betons['train']}", f"run_dir={run}"]
    assert main(["train", DEMO, *tiny_overrides, *ffcv]) == 0
    assert (run / "backbone.pt").is_file()
    probe_args = [
        "probe.loader=ffcv", f"probe.betons.cifar10_train={betons['train']}",
        f"probe.betons.cifar10_test={betons['test']}", "datasets=[cifar10]",
    ]  # fmt: skip
    assert main(["probe", str(run), *probe_args]) == 0
    assert "| cifar10 | 200 / 40 |" in (run / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.ffcv
@pytest.mark.shared_data
def test_real_cifar10_through_ffcv(shared_data, tmp_path):
    beton = tmp_path / "cifar10_train.beton"
    write = ["data", "write", str(shared_data.cifar10_jpeg), str(beton), "--limit", "2048"]
    assert main([*write, "--workers", "2"]) == 0
    run = tmp_path / "real_ffcv"
    overrides = [
        f"run_dir={run}", "data.loader=ffcv", f"data.beton={beton}", "data.batch_size=128",
        "train.max_steps=6", "checkpoint.every_steps=3",
    ]  # fmt: skip
    assert main(["train", DEMO, *overrides]) == 0
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000000006"
    probe = ["--datasets", "cifar10", "train_samples=1000", "test_samples=500", "epochs=5"]
    assert main(["probe", str(run), "--data", str(shared_data.root), *probe]) == 0
