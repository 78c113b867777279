import json

from selfsup.eval.probe import probe
from selfsup.eval.report import comparison, load_report, write_report
from selfsup.pipelines.config import load_config
from selfsup.pipelines.run_dir import probe_config_for
from selfsup.pipelines.trainer import train


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
    from selfsup.eval.report import read_scalars

    assert read_scalars(run / "tb", "probe/cifar10/linear_top1")
    assert read_scalars(run / "tb", "probe/fashion_mnist/random_init_knn_top1")


def test_random_init_baseline_is_the_runs_starting_point(tiny_overrides):
    # With zero learning rate the trained weights are the initial ones, so the
    # baseline (rebuilt from the seed) must score exactly the same.
    run = train(
        load_config(None, [*tiny_overrides, "optim.base_lr=0.0", "train.max_steps=1"])
    ).run_dir
    settings = probe_config_for(run, ["datasets=[cifar10]", "train_samples=100"])
    result = probe(run, settings, device="cpu").results[0]
    assert result.trained.knn_top1 == result.random_init.knn_top1


def test_report_comparison_has_one_row_per_run(tiny_overrides, tmp_path):
    runs = []
    for name in ("a", "b"):
        run = train(load_config(None, [*tiny_overrides, f"name={name}"])).run_dir
        outcome = probe(run, probe_config_for(run, ["datasets=[cifar10]", "baseline=false"]), "cpu")
        write_report(outcome, run)
        runs.append(run)
    header, rows = comparison([load_report(r) for r in runs])
    assert header[:5] == ["run", "method", "backbone", "steps", "final loss"]
    assert "cifar10 linear" in header and [row[0] for row in rows] == ["a", "b"]
