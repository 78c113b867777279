"""Nothing of a user's is overwritten unasked: run directories and export targets."""

from pathlib import Path

import pytest

from selfsup.cli import main
from selfsup.errors import CheckpointError, ConfigError
from selfsup.pipelines.checkpoint.tools import export_backbone
from selfsup.pipelines.config import load_config
from selfsup.pipelines.train.trainer import train


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_fresh_start_over_a_finished_run_is_refused_then_moves_it_aside(tiny_overrides):
    run = train(load_config(None, tiny_overrides)).run_dir
    before = snapshot(run)
    fresh = [*tiny_overrides, "checkpoint.resume=false", "train.max_steps=3"]
    with pytest.raises(ConfigError, match="holds the checkpoints of an earlier run.*--overwrite"):
        train(load_config(None, fresh))
    assert snapshot(run) == before  # untouched, byte for byte
    result = train(load_config(None, [*fresh, "checkpoint.overwrite=true"]))
    assert result.resumed_from_step is None and result.step == 3
    (aside,) = run.glob("replaced-*")
    assert (aside / "backbone.pt").read_bytes() == before[Path("backbone.pt")]
    # The whole earlier run moved, config included: it is still a run one can read.
    assert (aside / "config.yaml").read_bytes() == before[Path("config.yaml")]
    assert main(["checkpoint", "verify", str(aside)]) == 0
    assert sorted(p.name for p in (aside / "checkpoints").glob("step_*")) == [
        "step_000000003", "step_000000006",
    ]  # fmt: skip
    # The new history holds only the new run's checkpoints, and latest names one of them.
    assert [p.name for p in (run / "checkpoints").glob("step_*")] == ["step_000000003"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000000003"


def test_a_folder_that_is_not_a_run_is_refused(tiny_overrides, tmp_path):
    mine = tmp_path / "documents"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="is not a selfsup run directory .*thesis.tex"):
        train(load_config(None, [*tiny_overrides, f"run_dir={mine}"]))
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    # Another tool's config.yaml does not make a folder a run (selfsup-run.json does).
    (mine / "config.yaml").write_text("lr: 3\n")
    with pytest.raises(ConfigError, match="holds a config.yaml that is not a selfsup run's"):
        train(load_config(None, [*tiny_overrides, f"run_dir={mine}"]))
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "thesis.tex"]
    # A SLURM job's folder holds submitit's files before training starts: accepted.
    job = tmp_path / "job"
    job.mkdir()
    for name in ("123_submitted.pkl", "123_0_log.out", "123_0_log.err", "123_submission.sh"):
        (job / name).write_text("")
    assert train(load_config(None, [*tiny_overrides, f"run_dir={job}"])).step == 6  # the whole run
    assert not (job / "selfsup.lock").exists(), "the lock goes with the run"
    assert (job / "selfsup-run.json").is_file()


def test_a_start_that_failed_before_its_first_checkpoint_does_not_block_the_rerun(
    tiny_overrides, tmp_path
):
    run = tmp_path / "r"
    bad = [*tiny_overrides, f"run_dir={run}", "data.path=/nonexistent/cifar-10-batches-py"]
    with pytest.raises(Exception, match="nonexistent"):
        train(load_config(None, bad))
    assert not run.exists()  # refused while building, before the run directory is made
    assert train(load_config(None, [*tiny_overrides, f"run_dir={run}"])).step == 6  # the whole run


def test_export_never_overwrites_unasked_nor_a_runs_own_files(tiny_overrides, tmp_path, capsys):
    run = train(load_config(None, tiny_overrides)).run_dir
    before = snapshot(run)
    for target in (run / "config.yaml", run / "backbone.pt", run / "checkpoints" / "x.pt"):
        with pytest.raises(CheckpointError, match="one of the files of run directory"):
            export_backbone(run, target, force=True)
    out = tmp_path / "b.pt"
    out.write_text("keep me")
    code = main(["checkpoint", "export", str(run), str(out)])
    assert code == 2 and "exists; pass --force" in capsys.readouterr().err
    assert out.read_text() == "keep me"
    assert main(["checkpoint", "export", str(run), str(out), "--force"]) == 0
    assert export_backbone(run, run / "step6_backbone.pt").step == 6  # another name: fine
    assert snapshot(run).keys() - before.keys() == {Path("step6_backbone.pt")}
    assert not list(tmp_path.glob(".*.tmp"))
