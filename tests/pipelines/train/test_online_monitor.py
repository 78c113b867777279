"""The online monitor (``monitor.*``) in whole runs: it changes nothing it watches, its kNN is
the probe's, and a collapsed run raises the alarm and stops with a checkpoint.

Exact resume with the online linear classifier, and monitoring on DDP, ride on the
SIGKILL runs of tests/test_distributed_training.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.runs import DEMO, assert_identical

from selfsup.cli import main
from selfsup.pipelines.checkpoint.folders import find_latest
from selfsup.pipelines.checkpoint.weights import info_from_config, save_backbone
from selfsup.pipelines.config import load_config
from selfsup.pipelines.train.build import build_model
from selfsup.pipelines.train.monitor import read_scalars

# The probe's subset sizes: the online kNN and `selfsup probe` then score the same images
# (k, T and precision come from the probe section when the monitor leaves them unset).
MONITOR = ["monitor.enabled=true", "monitor.every_steps=3", "monitor.bank_size=40",
           "monitor.test_size=30", "monitor.linear=true"]  # fmt: skip
FINAL = "checkpoints/step_000000006"


def test_monitoring_changes_nothing_and_its_last_knn_is_the_probes(
    tiny_overrides, tmp_path, capsys
):
    plain, watched = tmp_path / "plain", tmp_path / "watched"
    assert main(["train", DEMO, *tiny_overrides, f"run_dir={plain}"]) == 0
    assert main(["train", DEMO, *tiny_overrides, f"run_dir={watched}", *MONITOR]) == 0
    # Weights, optimizer state and RNG states: those of the unmonitored run, bit for bit.
    assert_identical(plain / FINAL, watched / FINAL, ignore=("hook_monitor.pt",))
    assert (watched / FINAL / "hook_monitor.pt").is_file()

    knn = dict(read_scalars(watched / "tb", "monitor/knn_top1"))
    assert sorted(knn) == [3, 6]
    for tag in ("linear_top1", "rankme", "std", "alignment", "uniformity"):
        assert sorted(dict(read_scalars(watched / "tb", f"monitor/{tag}"))) == [3, 6], tag
    log = (watched / "train.log").read_text()
    assert f"monitor at step 6: kNN top-1 {knn[6]:.2f}%, linear top-1" in log
    assert json.loads((watched / "summary.json").read_text())["monitor"]["bank_size"] == 40

    probe = ["probe", str(watched), "--datasets", "cifar10", "--no-baseline",
             "train_samples=40", "test_samples=30"]  # fmt: skip
    assert main(probe) == 0
    report = json.loads((watched / "report.json").read_text())
    # The same images, weights, k and T: the same accuracy (TensorBoard keeps float32).
    assert report["probe"]["results"][0]["trained"]["knn_top1"] == pytest.approx(knn[6], abs=1e-4)
    # The report shows the curves and puts the last point beside the probe's kNN.
    markdown = (watched / "report.md").read_text()
    assert "## Online monitor (while training)" in markdown and (watched / "monitor.png").is_file()
    assert f"to {knn[6]:.2f}% (step 6), with a bank of 40 training images scored on 30" in markdown
    same = report["probe"]["results"][0]["monitor_subsets"]  # the monitor's images, rescored
    assert same["bank_size"] == 40 and same["knn_top1"] == pytest.approx(knn[6], abs=1e-4)
    assert "The probe, on the same 40 / 30 images of cifar10 with the final weights: " in markdown
    assert_curves_over_checkpoints(plain, watched, knn, tmp_path, capsys)


def assert_curves_over_checkpoints(plain, watched, knn, tmp_path, capsys) -> None:
    """Accuracy against step: each kept checkpoint probed (here, in a loop; the same tasks
    are one job array through submit-eval), then two runs' curves in one plot."""
    capsys.readouterr()
    every = ["--every-checkpoint", "--datasets", "cifar10", "train_samples=40", "test_samples=30"]
    assert main(["submit-eval", str(watched), *every[:3], "--dry-run"]) == 0
    tasks = capsys.readouterr().out.strip().splitlines()
    assert [t.split(" on ")[0] for t in tasks] == [
        f"task {i}: {watched / 'checkpoints' / name}"
        for i, name in enumerate(("step_000000003", "step_000000006"))
    ]
    assert main(["probe", str(watched), *every]) == 0
    curve = json.loads((watched / "probe_curve.json").read_text())["curves"][str(watched)]
    steps = [point[0] for point in curve["cifar10"]]
    assert steps == [0, 3, 6]  # step 0: the initial weights
    # The post-hoc kNN at each step is the online one (same images, k, T, precision).
    for step, _, posthoc in curve["cifar10"][1:]:
        assert posthoc == pytest.approx(knn[step], abs=1e-4)
    assert (watched / "probe_curve.png").is_file()
    assert "| 3 | " in (watched / "probe_curve.md").read_text()
    out = tmp_path / "curves.png"
    assert main(["report", str(plain), str(watched), "--curves", str(out)]) == 0
    assert out.is_file() and f"curves: {out}" in capsys.readouterr().out


def zero_backbone(config_overrides: list[str], path: Path) -> Path:
    """A backbone file of all-zero weights: every image maps to one point (a collapse)."""
    config = load_config(DEMO, config_overrides)
    trunk = build_model(config).backbone.trunk.state_dict()  # type: ignore[union-attr]
    zeros = {k: torch.zeros_like(v) for k, v in trunk.items()}
    save_backbone(path, zeros, info_from_config(config, str(path), None, None))
    return path


def test_a_collapsed_run_raises_the_alarm_and_stops_with_a_checkpoint(
    tiny_overrides, tmp_path, capsys
):
    run = tmp_path / "collapsed"
    weights = zero_backbone(tiny_overrides, tmp_path / "zeros.pt")
    code = main(["train", DEMO, *tiny_overrides, f"run_dir={run}", f"model.init_weights={weights}",
                 *MONITOR, "monitor.every_steps=2", "monitor.stop_on_collapse=true"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert (
        "training stopped at step 2/6 with a checkpoint: the features collapsed by step 2" in last
    )
    assert "std x sqrt(dim) 0.000 < monitor.collapse_std=0.1" in last
    assert find_latest(run / "checkpoints") == run / "checkpoints" / "step_000000002"
    log = (run / "train.log").read_text()
    assert "WARNING selfsup.pipelines.train.trainer: the features collapsed by step 2" in log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert "alarms/text_summary" in events.Tags()["tensors"]
