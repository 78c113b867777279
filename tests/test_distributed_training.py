"""Multi-process training through torchrun (gloo on CPU): exact resume, resharding, crashes.

Every run here is a real ``selfsup train`` under ``torch.distributed.run``
with 2 processes (or 1), killed with SIGKILL where a test says so.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import torch
from helpers.cluster import TWO_NODES, hosts, slurm_nodes_up, submit_two_node
from helpers.deepspeed_payloads import assert_every_reader_refuses_code
from helpers.payloads import poison_zip_pickle
from helpers.runs import (
    DEMO,
    REPO,
    all_tensors,
    assert_identical,
    finish,
    kill_all,
    kill_when,
    launch,
)

from selfsup.pipelines.checkpoint.folders import find_latest, read_meta
from selfsup.pipelines.checkpoint.manager import CheckpointManager, TrainState
from selfsup.pipelines.checkpoint.manifest import write_manifest
from selfsup.pipelines.config import load_config
from selfsup.pipelines.runtime.engines import Engine
from selfsup.pipelines.train.monitor import read_scalars
from selfsup.pipelines.train.optim import build_optimizer, build_scheduler
from selfsup.slurm.submit import wait_for

pytestmark = pytest.mark.slow

ENGINES = {
    "ddp": ["train.engine=ddp"],
    "deepspeed-zero2": [
        "train.engine=deepspeed",
        "train.zero_stage=2",
        "optim.name=adamw",
        "optim.base_lr=0.001",
        "model.channels_last=true",  # the default, which DeepSpeed must take as it is
    ],
    "deepspeed-zero3": [
        "train.engine=deepspeed",
        "train.zero_stage=3",
        "optim.name=adamw",
        "optim.base_lr=0.001",
        "model.channels_last=true",  # the default, which DeepSpeed must take as it is
    ],
}


@pytest.fixture
def base(tiny_overrides):
    dropped = ("train.max_steps", "checkpoint.every_steps")
    return [o for o in tiny_overrides if not o.startswith(dropped)] + [
        "train.log_every=1", "checkpoint.keep_last=10",
    ]  # fmt: skip


def assert_sigkill_resume_is_bitwise(
    nproc: int,
    common: list[str],
    tmp_path: Path,
    torchrun: bool = True,
    rival: bool = False,
    uninterrupted: Callable[[], None] | None = None,
    killed_only: tuple[str, ...] = (),
    config: str = DEMO,
    ignore: tuple[str, ...] = (),
) -> None:
    """An uninterrupted run (in ``tmp_path / "a"``) and one SIGKILLed after step 4 and
    relaunched end identical.

    ``rival``: the killed run is started together with a second one-process start
    in the same run directory (see :func:`only_one_of_two_starts_trains`).
    ``uninterrupted``: waits for an uninterrupted run started elsewhere (a SLURM job)
    into ``tmp_path / "a"``; by default one is launched here first.
    ``killed_only``: overrides of the killed run alone (the online monitor: the run it
    watches must end as the unwatched one), whose own files are not compared.
    ``ignore``: more files of either run left out of the comparison.
    """
    if uninterrupted is None:
        finish(launch(nproc, [*common, f"run_dir={tmp_path / 'a'}"], torchrun, config))

    run_b = tmp_path / "b"
    killed = [*common, *killed_only, f"run_dir={run_b}"]
    process = launch(nproc, killed, torchrun, config)
    if rival:
        rival_start = launch(1, killed, torchrun=False, config=config)
        process = only_one_of_two_starts_trains(process, rival_start)
    kill_when(process, run_b / "checkpoints" / "step_000000004")
    assert process.returncode == -signal.SIGKILL and not (run_b / "backbone.pt").exists()
    killed_at = int(read_meta(find_latest(run_b / "checkpoints"))["step"])
    assert 4 <= killed_at < 8
    err = finish(launch(nproc, killed, torchrun, config))
    if rival:  # the killed holder's lock: taken over, since its process is gone
        assert f"took over the stale lock of pid {process.pid} on {socket.gethostname()}" in err
        assert f"process {process.pid} is gone" in err
    assert (
        f"resuming from checkpoint {run_b / 'checkpoints' / f'step_{killed_at:09d}'} "
        f"at step {killed_at}/8" in err
    )

    if uninterrupted is not None:
        uninterrupted()
    final = "checkpoints/step_000000008"
    skipped = (*ignore, *(("hook_monitor.pt",) if killed_only else ()))
    assert_identical(tmp_path / "a" / final, run_b / final, ignore=skipped)
    curve_a = dict(read_scalars(tmp_path / "a" / "tb", "train/loss"))
    curve_b = dict(read_scalars(run_b / "tb", "train/loss"))
    assert sorted(curve_b) == list(range(1, 9))
    assert all(curve_a[s] == curve_b[s] for s in range(killed_at + 1, 9))


def only_one_of_two_starts_trains(a: subprocess.Popen, b: subprocess.Popen) -> subprocess.Popen:
    """Two starts in one run directory at once: one refuses naming the other; the holder."""
    deadline = time.monotonic() + 300
    while a.poll() is None and b.poll() is None:
        assert time.monotonic() < deadline, "neither start refused"
        time.sleep(0.05)
    loser, holder = (a, b) if a.poll() is not None else (b, a)
    _, err = loser.communicate()
    assert loser.returncode == 2 and holder.poll() is None, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert f"is in use by pid {holder.pid} on {socket.gethostname()}, since" in last, last
    return holder


def distillation(tmp_path: Path) -> list[str]:
    """Settings of a distilled student (a small frozen teacher written for the test)."""
    from helpers.teachers import write_teacher

    teacher = write_teacher(tmp_path / "teacher.pt", seed=7)
    return [
        "method.name=distill", f"method.teacher={teacher}", "method.seed_weight=0.5",
        "method.seed_queue_size=40", "method.simclr_weight=0.5",
    ]  # fmt: skip


# What each DeepSpeed SIGKILL run also carries, so that one run checks several features'
# exact resume: ZeRO-2 a sparse distilled student (then its files carrying code, refused by
# every reader); ZeRO-3 the device-resident loader (then export and tampering checks).
# DDP's SIGKILL and relaunch: the sparse run below (monitored; then resharded to one
# process and back), and the two-node jobs of tests/slurm/test_multinode.py (torchvision
# loader, a lost node, a lost rank, preemption, the time limit).
ALSO = {"deepspeed-zero2": ("distill", "sparse"), "deepspeed-zero3": ("memory",)}


@pytest.mark.parametrize("engine", list(ALSO))
def test_sigkill_and_relaunch_is_bitwise_identical_to_an_uninterrupted_run(
    engine, base, data_root, tmp_path, capsys
):
    also = ALSO[engine]
    extra = [*(distillation(tmp_path) if "distill" in also else []),
             *(SPARSE if "sparse" in also else []),
             *(["data.loader=memory"] if "memory" in also else [])]  # fmt: skip
    common = [*base, *ENGINES[engine], *extra, "train.max_steps=8", "checkpoint.every_steps=2"]
    # ZeRO-2's uninterrupted run is a 2-node x 1-task SLURM job of the dev cluster where
    # it is up (training beside the killed torchrun run): the relaunched run equals it.
    two_node = engine == "deepspeed-zero2" and slurm_nodes_up() >= 2
    job = submit_two_node([*common, f"run_dir={tmp_path / 'a'}"]) if two_node else None

    def job_done() -> None:
        assert job is not None
        outcome = wait_for(job.job, timeout_s=600)
        assert outcome.ok, outcome
        assert hosts(job) == set(TWO_NODES)

    try:
        assert_sigkill_resume_is_bitwise(
            2, common, tmp_path, uninterrupted=job_done if job else None
        )
    finally:
        if job is not None and not job.job.done():
            job.job.cancel(check=False)
    if "sparse" in also:
        assert_half_zeros(tmp_path / "b")
    if engine == "deepspeed-zero2":  # ZeRO shards of 2 processes, relaunched on 1: refused
        process = launch(1, [*common, f"run_dir={tmp_path / 'b'}", "train.max_steps=10"])
        _, err = process.communicate(timeout=600)
        assert process.returncode != 0
        assert "holds ZeRO shards of 2 processes; this run has 1" in err
        # Its files, carrying code in the forms DeepSpeed's own readers would run.
        assert_every_reader_refuses_code(tmp_path / "b", common, data_root, capsys)
    if engine == "deepspeed-zero3":  # the finished run's shards: export, inspect, tampering
        assert_zero3_export_matches_the_runs_own_backbone(tmp_path / "a", common, capsys)


def monitor(bank: int, test: int) -> list[str]:
    """The online monitor every 2 steps, with its linear classifier."""
    return ["monitor.enabled=true", "monitor.every_steps=2", f"monitor.bank_size={bank}",
            f"monitor.test_size={test}", "monitor.linear=true"]  # fmt: skip


def test_sparse_distilled_student_resumes_bitwise_after_sigkill_in_one_process(base, tmp_path):
    # Plain `python -m selfsup train`, no launcher: the single-process path a user runs.
    # Both runs monitored: the online linear classifier's weights and momenta (its own
    # checkpoint file) come back bit for bit too.
    common = [*base, *distillation(tmp_path), *SPARSE, *monitor(40, 30), "train.max_steps=8",
              "checkpoint.every_steps=2"]  # fmt: skip
    assert_sigkill_resume_is_bitwise(1, common, tmp_path, torchrun=False, rival=True)
    assert_half_zeros(tmp_path / "b")
    assert (tmp_path / "b" / "checkpoints" / "step_000000008" / "hook_monitor.pt").is_file()
    online = dict(read_scalars(tmp_path / "b" / "tb", "monitor/linear_top1"))
    assert online == dict(read_scalars(tmp_path / "a" / "tb", "monitor/linear_top1"))
    assert sorted(online) == [2, 4, 6, 8]


IJEPA = str(REPO / "configs" / "ijepa_vit_tiny_cifar10.yaml")
IJEPA_SMALL = ["method.pred_depth=1", "method.pred_emb_dim=48", "train.precision=fp32"]


@pytest.mark.parametrize("engine", ["single", "ddp", "deepspeed-zero2"])
def test_ijepa_target_encoder_resumes_bitwise_after_sigkill(engine, base, tmp_path):
    """The momentum target encoder is training state: in every checkpoint, restored on
    resume, so a SIGKILLed and relaunched I-JEPA run ends as the uninterrupted one."""
    common = [*(o for o in base if not o.startswith("method.")), *IJEPA_SMALL,
              *ENGINES.get(engine, []), "train.max_steps=8",
              f"checkpoint.every_steps={1 if engine == 'single' else 2}"]  # fmt: skip
    # DeepSpeed in one plain process (ZeRO-2 replicates parameters: the target is updated
    # as on DDP; ZeRO-3 is refused for I-JEPA, tests/bad_input).
    nproc, torchrun = (2, True) if engine == "ddp" else (1, False)
    reference = [*common, f"run_dir={tmp_path / 'a'}"]
    if engine == "ddp":  # the uninterrupted run on FSDP, which updates the target on its
        # shards, monitored (the sharded target's online kNN) and drawing its masks: the
        # killed and relaunched DDP run must equal it bit for bit.
        reference += [*monitor(40, 30), "monitor.every_steps=4", "train.image_every=4",
                      "train.engine=fsdp"]  # fmt: skip
    # One process: beside the killed run (each on a port of its own: DeepSpeed opens a
    # process group); two torchrun launches at once would meet on one port: first, then.
    started = launch(nproc, reference, torchrun, IJEPA)
    if torchrun:
        finish(started)
    uninterrupted = (lambda: None) if torchrun else partial(finish, started)
    assert_sigkill_resume_is_bitwise(
        nproc, common, tmp_path, torchrun, uninterrupted=uninterrupted, config=IJEPA,
        ignore=("hook_monitor.pt",),
    )  # fmt: skip
    if engine == "single":
        assert_target_follows_the_schedule(tmp_path / "a" / "checkpoints")
    if engine == "ddp":
        assert sorted(dict(read_scalars(tmp_path / "a" / "tb", "monitor/knn_top1"))) == [4, 8]


def assert_target_follows_the_schedule(checkpoints: Path) -> None:
    """Step 7's target by hand from step 6's target and step 7's student (m = 0.9995,
    linear from 0.996 to 1.0 over 8 steps); never in the optimizer; exported on request."""
    from selfsup.ssl.momentum import momentum_at

    before, after = (all_tensors(checkpoints / f"step_{s:09d}") for s in (6, 7))
    m = momentum_at(7, 8)
    assert m == pytest.approx(0.9995)
    targets = [k for k in after if k.startswith("dcp/model/target.encoder.")]
    assert len(targets) > 100
    moved = 0
    for key in targets:
        student = after[key.replace("target.encoder.", "backbone.")]
        expected = before[key].clone().mul_(m).add_(student, alpha=1 - m)
        assert torch.equal(after[key], expected), key
        moved += not torch.equal(after[key], before[key])
    assert moved > 0.9 * len(targets)  # buffers aside, every weight moved
    optimized = [k for k in after if k.startswith("dcp/optim/state/")]
    assert any("backbone." in k for k in optimized)
    assert not any("target." in k for k in optimized)


# Masks pruned at steps 1, 3, 5 and 7: before and after the kill at step 4.
SPARSE = ["sparsity.target=0.5", "sparsity.start=1", "sparsity.end=7", "sparsity.every=2"]


def assert_half_zeros(run: Path) -> None:
    trunk = torch.load(run / "backbone.pt", weights_only=True)["state_dict"]
    weight = trunk["layer2.0.conv1.weight"]
    assert int((weight == 0).sum()) == weight.numel() // 2


def test_sparse_run_resumes_bitwise_after_sigkill_on_ddp(base, data_root, tmp_path):
    # A sparse distilled student, as in one process and on DeepSpeed ZeRO-2.
    # JPEG class folders decoded in the training process (data.decode=gpu, here on the CPU):
    # 12 images, 2 per batch and rank, 3 steps an epoch; the kill lands in the second epoch.
    jpegs = [f"data.path={data_root / 'imagenette'}", "data.dataset=imagefolder",
             "data.decode=gpu", "data.batch_size=2"]  # fmt: skip
    common = [*base, *ENGINES["ddp"], *SPARSE, *distillation(tmp_path), *jpegs,
              "train.max_steps=8", "checkpoint.every_steps=2"]  # fmt: skip
    # The killed run monitored (every image of the folders' train and val splits, each
    # rank embedding half): it ends as the unmonitored one, weights, optimizer and RNGs.
    watched = tuple(monitor(12, 12))
    assert_sigkill_resume_is_bitwise(2, common, tmp_path, killed_only=watched)
    knn = dict(read_scalars(tmp_path / "b" / "tb", "monitor/knn_top1"))
    assert sorted(knn) == [2, 4, 6, 8] and all(0 <= v <= 100 for v in knn.values())
    assert_reshards_to_one_process_and_back(tmp_path / "b", [*common, *watched])


def assert_reshards_to_one_process_and_back(run: Path, options: list[str]) -> None:
    """A finished 2-process run (8 steps) goes on in 1 process, then in 2 again: the
    checkpoint reshards (its masks, buffers of the model, with it), training continues
    from the step saved. (2 images a step: the loss is too noisy to compare across.)"""
    for before, after, steps in ((2, 1, 10), (1, 2, 12)):
        err = finish(launch(after, [*options, f"run_dir={run}", f"train.max_steps={steps}"]))
        assert f"written by {before} process(es), this run has {after}: resharded" in err
        assert f"at step {steps - 2}/{steps}" in err
    loss = dict(read_scalars(run / "tb", "train/loss"))
    assert sorted(loss) == list(range(1, 13))
    assert all(torch.isfinite(torch.tensor(v)) for v in loss.values())
    assert_half_zeros(run)  # the masks came through both reshards


def test_a_kill_while_writing_leaves_the_previous_checkpoint_usable(base, tmp_path):
    """SIGKILL at random moments inside checkpoint writes, several times, then finish."""
    run_dir = tmp_path / "run"
    common = [*base, f"run_dir={run_dir}", "train.max_steps=12", "checkpoint.every_steps=1"]
    rng = random.Random(0)
    checkpoints = run_dir / "checkpoints"
    interrupted_writes = 0
    for trial in range(3):
        before = find_latest(checkpoints)
        process = launch(1, common)
        # Wait for a checkpoint write to begin (its temporary folder) once an earlier
        # one is complete, then kill inside it.
        deadline = time.monotonic() + 300
        while find_latest(checkpoints) is None or not any(
            p.name.endswith(".tmp") for p in checkpoints.glob(".step_*")
        ):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        kill_all(process)
        interrupted_writes += any(checkpoints.glob(".step_*.tmp"))
        latest = find_latest(checkpoints)
        assert latest is not None, f"trial {trial}: no usable checkpoint"
        assert before is None or latest.name >= before.name
        # The checkpoint resume would pick loads, with model and optimizer.
        config = load_config(DEMO, common)
        from selfsup.pipelines.train.build import build_model

        model = build_model(config)
        optimizer = build_optimizer(model, config.optim, config.data.batch_size)
        scheduler = build_scheduler(optimizer, config.optim, 12, 12)
        engine = Engine(torch.device("cpu"), "fp32", None)
        engine.setup(model, optimizer)
        state = CheckpointManager(checkpoints, engine, scheduler, TrainState()).load(latest)
        assert state.step == int(latest.name[5:])
    assert interrupted_writes >= 2, "the kills should land inside checkpoint writes"
    err = finish(launch(1, common))
    assert "resuming from checkpoint" in err
    assert (run_dir / "backbone.pt").is_file()
    assert not list(checkpoints.glob(".step_*.tmp"))  # leftovers cleaned by later saves


def assert_zero3_export_matches_the_runs_own_backbone(run: Path, common: list[str], capsys):
    """A finished ZeRO-3 run of 2 processes: export = its backbone.pt; tampered files refused
    by inspect, verify and export."""
    from selfsup.cli import main
    from selfsup.pipelines.checkpoint.weights import load_backbone

    tmp_path = run.parent
    assert main(["checkpoint", "export", str(run), str(tmp_path / "z3.pt")]) == 0
    exported, _ = load_backbone(tmp_path / "z3.pt")
    written, _ = load_backbone(
        run / "backbone.pt"
    )  # gathered from the shards at the end of training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(exported.eval()(x), written.eval()(x))
    assert main(["checkpoint", "inspect", str(run)]) == 0
    assert "deepspeed (ZeRO stage 3), written by 2 process(es)" in capsys.readouterr().out
    # A tampered DeepSpeed file (manifest rewritten to match) is refused by every
    # reader: DeepSpeed's own loads are made weights-only.
    latest = find_latest(run / "checkpoints")
    sentinel = tmp_path / "PAYLOAD_RAN"
    model_states = "zero_pp_rank_0_mp_rank_00_model_states.pt"  # ZeRO-3's per-rank files
    for name in (model_states, "zero_pp_rank_1_mp_rank_00_optim_states.pt"):
        shutil.copy(latest / name, tmp_path / name)
        poison_zip_pickle(latest / name, sentinel)
        write_manifest(latest)
        for args in (
            ["checkpoint", "inspect", str(run)],
            ["checkpoint", "verify", str(run)],
            ["checkpoint", "export", str(run), str(tmp_path / "again.pt")],
        ):
            assert main(args) == 2, args
            assert f"refusing {latest / name}: it carries code" in capsys.readouterr().err
        shutil.copy(tmp_path / name, latest / name)
    # (A resume reads these files through the same weights-only guard: the ZeRO-2 run's
    # payload checks launch one.)
    assert not sentinel.exists()
