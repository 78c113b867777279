import json

import torch

from selfsup.eval.frozen.probe import initial_backbone, probe, probe_config_for
from selfsup.eval.reports.report import comparison, load_report_if_any, write_report
from selfsup.pipelines.checkpoint.weights import load_backbone
from selfsup.pipelines.config import load_config
from selfsup.pipelines.train.trainer import train

BATCHNORM_STATISTICS = {"running_mean", "running_var", "num_batches_tracked"}


def test_probe_writes_json_markdown_plot_and_tensorboard(tiny_overrides):
    run = train(load_config(None, tiny_overrides)).run_dir
    settings = probe_config_for(run, ["datasets=[cifar10,fashion_mnist]"])
    outcome = probe(run, settings, device="cpu")
    assert [r.dataset for r in outcome.results] == ["cifar10", "fashion_mnist"]
    for result in outcome.results:
        assert result.random_init is not None
        assert 0 <= result.trained.linear_top1 <= 100 and 0 <= result.trained.knn_top1 <= 100
    report = write_report(outcome, run)
    saved = json.loads((run / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["run"]["step"] == 6 and saved["run"]["loss_curve"]
    markdown = (run / "report.md").read_text()
    assert "| cifar10 |" in markdown and "| fashion_mnist |" in markdown
    assert "![training loss](loss.png)" in markdown
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from selfsup.pipelines.train.monitor import read_scalars

    assert read_scalars(run / "tb", "probe/cifar10/linear_top1")
    assert read_scalars(run / "tb", "probe/fashion_mnist/random_init_knn_top1")


def test_random_init_baseline_is_the_runs_starting_point(tiny_overrides):
    # At learning rate 0 a step leaves every parameter where it started, so the
    # baseline rebuilt from the seed must equal the trained weights bit for bit.
    # BatchNorm running statistics still move in a training-mode forward pass,
    # so buffers are compared apart: only those may differ. Comparing tensors,
    # not kNN scores, keeps the test independent of the CPU's kernels.
    run = train(
        load_config(None, [*tiny_overrides, "optim.base_lr=0.0", "train.max_steps=1"])
    ).run_dir
    trained, info = load_backbone(run)
    baseline = initial_backbone(info)
    trained_params = dict(trained.named_parameters())
    baseline_params = dict(baseline.named_parameters())
    assert trained_params.keys() == baseline_params.keys()
    for name, value in trained_params.items():
        assert torch.equal(value, baseline_params[name]), name
    baseline_buffers = dict(baseline.named_buffers())
    moved = {
        name
        for name, value in trained.named_buffers()
        if not torch.equal(value, baseline_buffers[name])
    }
    assert moved and all(name.rsplit(".", 1)[-1] in BATCHNORM_STATISTICS for name in moved)
    # A different seed gives other weights: the comparison above can fail.
    info.seed += 1
    other = dict(initial_backbone(info).named_parameters())
    assert not all(torch.equal(v, other[k]) for k, v in trained_params.items())


def test_report_comparison_has_one_row_per_run(tiny_overrides, tmp_path):
    runs = []
    for name in ("a", "b"):
        run = train(load_config(None, [*tiny_overrides, f"name={name}"])).run_dir
        outcome = probe(run, probe_config_for(run, ["datasets=[cifar10]", "baseline=false"]), "cpu")
        write_report(outcome, run)
        runs.append(run)
    header, rows = comparison([load_report_if_any(r) for r in runs])
    assert header[:5] == ["run", "method", "backbone", "steps", "final loss"]
    assert "cifar10 linear" in header and [row[0] for row in rows] == ["a", "b"]
