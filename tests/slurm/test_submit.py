"""SLURM submission through submitit, against a real slurmctld (slurm/dev-cluster.sh)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.cluster import slurm_nodes_up

from selfsup.cli import main
from selfsup.errors import ConfigError
from selfsup.pipelines.config import load_config
from selfsup.pipelines.train.trainer import train
from selfsup.slurm.profiles import load_profile
from selfsup.slurm.status import job_starts
from selfsup.slurm.submit import Outcome, submit_training, wait_for

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs" / "demo.yaml")


def test_dry_run_of_a_two_node_eight_gpu_deepspeed_job(capsys, tmp_path):
    code = main([
        "submit", DEMO, "train.engine=deepspeed", "train.zero_stage=3", "optim.name=adamw",
        f"output_dir={tmp_path}", "--cluster", "h100x8", "--nodes", "2", "--time", "600",
        "--partition", "gpu-long", "--dry-run",
    ])  # fmt: skip
    assert code == 0
    script = capsys.readouterr().out
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=12",
        "#SBATCH --signal=USR2@300",
        "#SBATCH --time=600",
        "#SBATCH --requeue",
        "#SBATCH --partition=gpu-long",
        f"#SBATCH --output={tmp_path}/demo-%j/%j_0_log.out",
    ):
        assert line in script, line
    assert "srun --unbuffered" in script and "-m submitit.core._submit" in script
    assert "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in script and " NCCL_ASYNC" not in script
    assert not list(tmp_path.iterdir())  # nothing submitted or written


def test_profile_flags_override_the_profile():
    profile = load_profile("h100x8", {"nodes": 4, "partition": None, "gpus_per_node": 4})
    assert profile.nodes == 4 and profile.gpus_per_node == 4 and profile.tasks == 4
    assert profile.partition == "gpu"  # None flags leave the profile's value


def test_missing_profile_and_bad_setting_are_one_line(capsys, tmp_path):
    assert main(["submit", DEMO, "--cluster", "h100x9", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "cluster profile 'h100x9' not found in configs/cluster (did you mean 'h100x8'?)" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("gpus_per_nod: 8\n")
    with pytest.raises(ConfigError, match="gpus_per_nod.*did you mean 'gpus_per_node'"):
        load_profile(str(bad))


def test_slurm_not_reachable_is_one_line(tmp_path, monkeypatch, capsys):
    # A SLURM config whose controller does not exist, and one with no sbatch on PATH.
    # MessageTimeout=1: the client gives up in a second rather than SLURM's default ten.
    conf = tmp_path / "slurm.conf"
    conf.write_text(
        "ClusterName=nowhere\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=6999\n"
        "NodeName=localhost CPUs=1 State=UNKNOWN\nPartitionName=p Nodes=localhost Default=YES\n"
        "MessageTimeout=1\n"
    )
    for name, value in (("SLURM_CONF", str(conf)), ("PATH", str(Path(sys.executable).parent))):
        with monkeypatch.context() as patch:  # what sbatch, run by submitit, reads
            patch.setenv(name, value)
            assert main(["submit", DEMO, f"output_dir={tmp_path}"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "selfsup: error: SLURM is not reachable" in err, err


# --- against the real cluster -------------------------------------------------------------


@pytest.fixture
def job_overrides(tiny_overrides, tmp_path):
    kept = [
        o
        for o in tiny_overrides
        if not o.startswith(("output_dir", "train.max_steps", "checkpoint"))
    ]
    return [*kept, f"output_dir={tmp_path / 'runs'}", "train.engine=ddp", "train.log_every=1"]


def submit(overrides: list[str], **profile_overrides):
    config = load_config(DEMO, overrides)
    return submit_training(config, load_profile("dev", profile_overrides))


@pytest.mark.slurm
def test_a_failing_job_surfaces_its_traceback(job_overrides, tmp_path):
    run = submit([*job_overrides, "name=failing", f"data.path={tmp_path / 'nowhere'}"])
    outcome = wait_for(run.job, timeout_s=300)
    assert outcome.state == "FAILED"
    assert "Traceback" in outcome.error and "DataError" in outcome.error
    assert "does not exist" in outcome.error


@pytest.mark.slurm
def test_a_cancelled_job_is_reported_cancelled(job_overrides):
    run = submit([*job_overrides, "name=cancelled", "train.max_steps=5000"])
    deadline = time.monotonic() + 120
    while run.job.get_info(mode="force").get("State") != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    subprocess.run(["scancel", run.job_id], check=True, timeout=60)
    outcome: Outcome = wait_for(run.job, poll_s=1.0, timeout_s=120)  # never waits forever
    assert outcome.state == "CANCELLED", outcome


@pytest.mark.slurm
def test_unknown_partition_is_one_line(capsys, job_overrides):
    code = main(["submit", DEMO, *job_overrides, "--cluster", "dev", "--partition", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "selfsup: error: SLURM refused the job" in err and "partition" in err


@pytest.mark.slurm
@pytest.mark.slow
def test_evaluation_array_lands_in_one_report(tiny_overrides, data_root, tmp_path, capsys):
    run = train(load_config(None, tiny_overrides)).run_dir
    out = tmp_path / "sweep"
    code = main([
        "submit-eval", str(run), "--datasets", "cifar10", "--lrs", "0.01,0.001,0.0001",
        "--set", f"data_path={data_root}", "--set", "epochs=5", "--set", "knn_k=5",
        "--set", "num_workers=0", "--set", "baseline=false", "--out", str(out), "--cluster", "dev",
        "--tasks-per-node", "1", "--mem-gb", "2", "--wait-min", "15",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "eval_report.json").read_text())
    assert sorted(r["lr"] for r in report["results"]) == [0.0001, 0.001, 0.01]
    assert not report["failures"]
    markdown = (out / "eval_report.md").read_text()
    assert markdown.count("| cifar10 |") == 3 and "**" in markdown
    if slurm_nodes_up() >= 2:  # the two-node cluster: the array's tasks ran on both nodes
        array_id = next(out.glob("*_submitted.pkl")).name.split("_")[0]
        assert {s.nodes for s in job_starts(array_id)} == {"node1", "node2"}


@pytest.mark.slurm
@pytest.mark.slow
def test_finetune_array_of_two_datasets_by_two_recipes_lands_in_one_report(
    tiny_overrides, data_root, tmp_path, capsys
):
    run = train(load_config(None, tiny_overrides)).run_dir
    out = tmp_path / "finetune-sweep"
    settings = [
        f"data_path={data_root}", "batch_size=16", "num_workers=0", "train_samples=40",
        "test_samples=20", "epochs=1", "unfreeze_epochs=1", "train.precision=fp32",
    ]  # fmt: skip
    code = main([
        "submit-eval", str(run), "--task", "finetune", "--datasets", "cifar10,fashion_mnist",
        "--recipes", "head_then_unfreeze,full", *[a for s in settings for a in ("--set", s)],
        "--device", "cpu", "--out", str(out), "--cluster", "dev", "--tasks-per-node", "1",
        "--mem-gb", "3", "--wait-min", "20",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "eval_report.json").read_text())
    assert not report["failures"]
    cells = sorted((r["dataset"], r["recipe"]) for r in report["results"])
    assert cells == [(d, r) for d in ("cifar10", "fashion_mnist")
                     for r in ("full", "head_then_unfreeze")]  # fmt: skip
    assert all(set(r["test_accuracy"]) == {"pretrained", "scratch"} for r in report["results"])
    markdown = (out / "eval_report.md").read_text()
    assert markdown.count("| cifar10 |") == 2 and markdown.count("| fashion_mnist |") == 2
    assert all(Path(r["report"]).is_file() for r in report["results"])


def test_finetune_array_dry_run_checks_every_task(tiny_overrides, data_root, capsys):
    run = train(load_config(None, [*tiny_overrides, "train.max_steps=1"])).run_dir
    base = ["submit-eval", str(run), "--task", "finetune", "--datasets", "cifar10,fashion_mnist"]
    assert main([*base, "--lrs", "0.01,0.001", "--dry-run"]) == 0
    tasks = capsys.readouterr().out.splitlines()
    assert len(tasks) == 2 * 2 * 2 and "on fashion_mnist, full, lr 0.001" in tasks[-1]
    assert main([*base, "--recipes", "fulll", "--dry-run"]) == 2
    assert "unknown fine-tune recipe 'fulll'" in capsys.readouterr().err
