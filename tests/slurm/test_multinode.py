"""Two-node jobs on the dev cluster's two nodes (``slurm/dev-cluster.sh start --nodes 2``).

Each node is a network and UTS namespace of its own (hostname node1/node2, its
own address on the cluster's private subnet), so the ranks of a job really
rendezvous and all-reduce across interfaces. Every job is compared with a
``torchrun --nproc-per-node 2`` run of the same config on this machine: the
final checkpoint (weights, optimizer state, every rank's RNG) must be equal
bit for bit, after whatever the cluster did to the job on the way: preemption
by the scheduler, the time limit, a lost node, a lost rank.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from helpers.cluster import hosts, rank_lines, submit_two_node
from helpers.runs import DEMO, REPO, assert_identical, finish, launch

from selfsup.cli import main
from selfsup.slurm.status import job_starts, run_status
from selfsup.slurm.submit import Submission, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.two_nodes, pytest.mark.slow]

STEPS = 16
# fp32 and SGD: on 2 ranks FSDP then computes what DDP computes, bit for bit (see
# tests/test_fsdp_training.py), so one DDP run is the reference of every job, FSDP's too.
EXACT = ["train.precision=fp32", "optim.name=sgd"]
DEV_CLUSTER = REPO / "slurm" / "dev-cluster.sh"
DDP = ["train.engine=ddp", "data.loader=torchvision"]


def overrides(data_root: Path, run_dir: Path, *extra: str, steps: int = STEPS) -> list[str]:
    return [
        f"run_dir={run_dir}", f"data.path={data_root / 'cifar-10-batches-py'}",
        "data.batch_size=16", "data.num_workers=0", "model.channels_last=false",
        "method.proj_hidden_dim=64", "method.proj_output_dim=32", "optim.warmup_epochs=0.5",
        f"train.max_steps={steps}", "train.log_every=2", "checkpoint.every_steps=4", *EXACT,
        "monitor.enabled=false", *extra,
    ]  # fmt: skip


def final_checkpoint(run_dir: Path, steps: int = STEPS) -> Path:
    return run_dir / "checkpoints" / f"step_{steps:09d}"


class Twin:
    """A torchrun run of a job's config, started at once and waited for when first compared
    (so that it trains while SLURM schedules and starts the job)."""

    def __init__(self, run_dir: Path, options: list[str]) -> None:
        self.run_dir, self.process = run_dir, launch(2, options)

    def final(self, steps: int = STEPS) -> Path:
        if self.process.returncode is None:
            finish(self.process)
        return final_checkpoint(self.run_dir, steps)


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory, data_root):
    run_dir = tmp_path_factory.mktemp("torchrun") / "ddp"
    twin = Twin(run_dir, overrides(data_root, run_dir, *DDP))
    yield twin
    twin.process.kill()


submit = submit_two_node


def states(job_id: str, timeout: float = 60) -> list[str]:
    """Every start's state, once accounting has recorded the last one's end."""
    deadline = time.monotonic() + timeout
    while True:
        found = [start.state for start in job_starts(job_id)]
        if found and found[-1] not in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING"):
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.5)


def wait_until(path: Path, job: Submission, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        assert job.job.get_info(mode="force").get("State") in ("PENDING", "RUNNING", None)
        time.sleep(0.1)
    return time.monotonic()


def task_process(node: str, run_dir: Path) -> psutil.Process:
    """The job's training process on a node (found among the node's namespace's processes)."""
    pids = subprocess.run(
        ["ip", "netns", "pids", f"selfsup-{node}"], capture_output=True, text=True, check=True
    ).stdout.split()
    for pid in map(int, pids):
        try:
            command = psutil.Process(pid).cmdline()
        except psutil.NoSuchProcess:
            continue
        training = command and "python" in Path(command[0]).name
        if training and "submitit.core._submit" in command and str(run_dir) in command:
            return psutil.Process(pid)
    raise AssertionError(f"no training process of {run_dir} on {node}")


def assert_resumed_equal(job: Submission, reference: Twin, first_state: str) -> list[str]:
    outcome = wait_for(job.job, timeout_s=600)
    assert outcome.ok, outcome.error
    history = states(job.job_id)
    assert history[0] == first_state and history[-1] == "COMPLETED", history
    assert_identical(reference.final(), final_checkpoint(job.run_dir))
    return history


def log_time(log: str, pattern: str) -> tuple[float, re.Match]:
    """The wall time of train.log's first line matching ``pattern``, and the match."""
    match = re.search(rf"^(\S+ \S+) INFO .*{pattern}", log, re.M)
    assert match, log[-2000:]
    stamp = time.strptime(match.group(1).split(",")[0], "%Y-%m-%d %H:%M:%S")
    return time.mktime(stamp), match


def recovery(job: Submission, fault: str, at: float | None = None) -> None:
    """Print the time from the fault to training again and the steps trained twice.

    docs/slurm.md quotes these lines (pytest -s). ``at`` is the fault's wall time
    (None: when the job logged its stop); the steps the first start reached are
    read from its own TensorBoard file (to within train.log_every).
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = (job.run_dir / "train.log").read_text()
    resumed, match = log_time(log, r"resuming from checkpoint .* at step (\d+)/")
    at = log_time(log, "stopped by SIG")[0] if at is None else at
    first = EventAccumulator(str(sorted((job.run_dir / "tb").glob("events.out.*"))[0]))
    reached = max(event.step for event in first.Reload().Scalars("train/loss"))
    print(
        f"\nrecovery of job {job.job_id} from {fault}: {resumed - at:.0f} s from the fault to "
        f"training again, {max(0, reached - int(match.group(2)))} step(s) trained twice"
    )


@pytest.mark.ffcv
def test_two_node_ddp_jobs_equal_torchrun_and_log_each_rank_on_its_node(
    ddp_reference, data_root, tmp_path, capsys
):
    # Beside it, the same job reading an ffcv .beton: ffcv draws its crops from its own
    # random state (docs/data.md), so that one is checked for running on both nodes.
    beton = tmp_path / "train.beton"
    write = ["data", "write", str(data_root / "cifar-10-batches-py"), str(beton)]
    assert main([*write, "--split", "train", "--workers", "1"]) == 0
    ffcv = submit(overrides(data_root, tmp_path / "ffcv", "train.engine=ddp", "data.loader=ffcv",
                            f"data.beton={beton}", steps=8))  # fmt: skip
    run_dir = tmp_path / "ddp"
    code = main(["submit", DEMO, *overrides(data_root, run_dir, *DDP), "--cluster", "dev2",
                 "--wait"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    job_id = re.search(r"submitted job (\d+)", out).group(1)
    ranks = rank_lines(run_dir, job_id)
    assert {ranks[0][0], ranks[1][0]} == {"node1", "node2"}, ranks
    assert ranks[0][1] != ranks[1][1] and not ranks[1][1].startswith("127."), ranks
    shards = sorted(p.name for p in final_checkpoint(run_dir).glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # each rank wrote its own
    assert_identical(ddp_reference.final(), final_checkpoint(run_dir))
    lines = run_status(run_dir).lines()
    assert f"job         {job_id}: COMPLETED on node[1-2]" in lines[1], lines
    assert lines[2] == "restarts    0" and f"step {STEPS} of {STEPS}" in lines[3], lines
    assert wait_for(ffcv.job, timeout_s=300).ok
    assert hosts(ffcv) == {"node1", "node2"}
    assert run_status(ffcv.run_dir).checkpoint == final_checkpoint(ffcv.run_dir, 8)


def test_a_lost_rank_leaves_its_peer_within_the_timeout_and_the_job_ends_equal(
    ddp_reference, data_root, tmp_path
):
    # Beside it, a job whose requeues are used up (max_requeues=0) gets the preemption
    # warning: it checkpoints and fails, naming the bound.
    bounded = submit(overrides(data_root, tmp_path / "bounded", *DDP, steps=200), max_requeues=0)
    timeout_s = 20
    options = overrides(data_root, tmp_path / "rank", *DDP, f"train.dist_timeout_s={timeout_s}")
    job = submit(options)
    wait_until(bounded.run_dir / "checkpoints" / "step_000000004", bounded)
    subprocess.run(["scancel", "--signal=USR2", bounded.job_id], check=True, timeout=60)
    wait_until(job.run_dir / "checkpoints" / "step_000000008", job)
    survivor = task_process("node1", job.run_dir)
    at, killed = time.time(), time.monotonic()
    task_process("node2", job.run_dir).kill()  # SIGKILL; node2's slurmd lives on
    survivor.wait(timeout=timeout_s + 60)
    assert time.monotonic() - killed < timeout_s + 10
    assert_resumed_equal(job, ddp_reference, "REQUEUED")
    first_log = (job.run_dir / f"{job.job_id}_0_log.err").read_text()
    assert re.search(r"lost rank 1 on node2 \(\S+\): a collective failed on rank 0", first_log)
    recovery(job, "a lost rank", at)
    outcome = wait_for(bounded.job, timeout_s=300)
    assert outcome.state == "FAILED" and "not requeued again (max_requeues=0)" in outcome.error
    assert run_status(bounded.run_dir).checkpoint_step >= 4  # nothing lost


def test_time_limit_warning_mid_run_requeues_and_ends_equal(data_root, tmp_path):
    # Two minutes, warned 60 s before: SLURM checks limits every 30 s, so the warning
    # comes 30-60 s into each start. The uninterrupted twin trains beside the job (the
    # cores shared, both slower: the job surely outlives its first warning).
    steps = 110
    twin = Twin(tmp_path / "reference", overrides(data_root, tmp_path / "reference", *DDP,
                                                  steps=steps))  # fmt: skip
    options = overrides(data_root, tmp_path / "timed", *DDP, "checkpoint.every_steps=10",
                        steps=steps)  # fmt: skip
    job = submit(options, time_min=2, signal_delay_s=60, max_requeues=4)
    twin.final(steps)
    outcome = wait_for(job.job, timeout_s=600)
    assert outcome.ok, outcome.error
    history = states(job.job_id)
    assert history[0] == "REQUEUED" and history[-1] == "COMPLETED", history
    assert "stopped by SIGUSR2" in (job.run_dir / "train.log").read_text()
    assert_identical(twin.final(steps), final_checkpoint(job.run_dir, steps))
    recovery(job, "the time limit")


def test_preempted_fsdp_job_requeues_and_ends_equal(ddp_reference, data_root, tmp_path):
    """FSDP here (the DDP jobs face the other faults), ending equal to the DDP reference."""
    job = submit(overrides(data_root, tmp_path / "preempted", "train.engine=fsdp",
                           "data.loader=torchvision"))  # fmt: skip
    wait_until(job.run_dir / "checkpoints" / "step_000000004", job)
    at = time.time()
    urgent = subprocess.run(
        ["sbatch", "--parsable", "--partition=urgent", "--nodes=2", "--exclusive", "--time=1",
         f"--output={tmp_path}/urgent.out", "--wrap=srun hostname"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert assert_resumed_equal(job, ddp_reference, "PREEMPTED")
    assert states(urgent.stdout.strip().split(";")[0]) == ["COMPLETED"]
    recovery(job, "preemption", at)
    log = (job.run_dir / "train.log").read_text()
    assert "stopped by SIGTERM" in log and "resuming from checkpoint" in log
    lines = run_status(job.run_dir).lines()
    assert lines[2].startswith("restarts    1 (PREEMPTED at "), lines


def test_a_lost_node_fails_the_job_which_is_requeued_and_ends_equal(
    ddp_reference, data_root, tmp_path
):
    # The surviving rank waits out dist_timeout_s in its collective: SLURM, which
    # declares node2 lost after SlurmdTimeout (5 s here), must act first.
    job = submit(overrides(data_root, tmp_path / "node", *DDP, "train.dist_timeout_s=300"))
    wait_until(job.run_dir / "checkpoints" / "step_000000008", job)
    at = time.time()
    subprocess.run([DEV_CLUSTER, "kill-node", "node2"], check=True, timeout=60)
    try:
        deadline = time.monotonic() + 90
        while "NODE_FAIL" not in [s.state for s in job_starts(job.job_id)]:
            assert time.monotonic() < deadline, job_starts(job.job_id)
            time.sleep(0.5)
    finally:
        subprocess.run([DEV_CLUSTER, "revive-node", "node2"], check=True, timeout=60)
    assert_resumed_equal(job, ddp_reference, "NODE_FAIL")
    recovery(job, "a lost node", at)
