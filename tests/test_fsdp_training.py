"""train.engine=fsdp on 2 gloo processes: the DDP run's losses and states, exact resume
(a SIGKILL inside a background checkpoint write), checkpoints across engines and
process counts, the export of a sharded checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers.runs import DEMO, REPO, assert_identical, finish, kill_when, launch

from selfsup.cli import main
from selfsup.pipelines.checkpoint.folders import find_latest
from selfsup.pipelines.checkpoint.manager import CheckpointManager, TrainState
from selfsup.pipelines.checkpoint.manifest import write_manifest
from selfsup.pipelines.config import load_config
from selfsup.pipelines.runtime.engines import Engine
from selfsup.pipelines.train.build import build_model
from selfsup.pipelines.train.monitor import read_scalars
from selfsup.pipelines.train.optim import build_optimizer, build_scheduler

pytestmark = pytest.mark.slow

MAE = str(REPO / "configs" / "mae_vit_tiny_cifar10.yaml")
STEPS = 20


@pytest.fixture
def fp32(tiny_overrides):
    """20 fp32 steps, a checkpoint every 5, each loss logged.

    SGD, not LARS: LARS's trust ratios are norms that FSDP reduces over the
    shards, in another order than one tensor's norm; the 1e-7 differences that
    makes grow past 1e-4 within a few steps of a tiny high-learning-rate run.
    (LARS on sharded parameters is LARS: checked against one process in float64.)
    """
    dropped = ("train.max_steps", "checkpoint.every_steps", "train.log_every")
    return [o for o in tiny_overrides if not o.startswith(dropped)] + [
        f"train.max_steps={STEPS}", "checkpoint.every_steps=5", "checkpoint.keep_last=10",
        "train.log_every=1", "train.precision=fp32", "optim.name=sgd",
    ]  # fmt: skip


def losses(run_dir: Path) -> dict[int, float]:
    return dict(read_scalars(run_dir / "tb", "train/loss"))


def assert_follows(reference: dict[int, float], curve: dict[int, float], steps: range) -> None:
    """Relative difference under 1e-4 at every step of ``steps``."""
    assert set(steps) <= set(curve), sorted(curve)
    for step in steps:
        gap = abs(curve[step] - reference[step]) / abs(reference[step])
        assert gap < 1e-4, f"step {step}: {curve[step]} vs {reference[step]} (ddp)"


def test_simclr_resnet18_on_fsdp_equals_ddp_through_a_kill_in_a_background_write(
    fp32, tmp_path, capsys
):
    """On 2 ranks in fp32, FSDP computes what DDP computes bit for bit (a sum of two
    shards is the sum of two replicas), so the uninterrupted DDP run is the reference
    of every FSDP run here: its losses, its checkpoints, its final state."""
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    finish(launch(2, [*fp32, "train.engine=ddp", f"run_dir={ddp}"]))

    # SIGKILL while step 10's checkpoint is written in the background (its copy is
    # made: the RNG files follow it): `latest` stays on step 5, written in the
    # background too and equal to DDP's synchronous step 5.
    background = [*fp32, "train.engine=fsdp", "checkpoint.async_save=true", f"run_dir={fsdp}"]
    kill_when(launch(2, background), fsdp / "checkpoints" / ".step_000000010.tmp" / "rng_rank1.pt")
    assert find_latest(fsdp / "checkpoints").name == "step_000000005"
    assert_identical(ddp / "checkpoints/step_000000005", fsdp / "checkpoints/step_000000005")
    # The same files with DDP's meta.json: the rerun resumes a DDP checkpoint on fsdp.
    shutil.copy(ddp / "checkpoints/step_000000005/meta.json", fsdp / "checkpoints/step_000000005")
    write_manifest(fsdp / "checkpoints/step_000000005")
    err = finish(launch(2, background))
    assert "step_000000005 at step 5/20" in err and "writing it in the background" in err
    assert "written by the ddp engine: resumed on fsdp" in err
    assert_follows(losses(ddp), losses(fsdp), range(1, STEPS + 1))
    assert_identical(ddp / "checkpoints/step_000000020", fsdp / "checkpoints/step_000000020")

    # The run's own export (gathered by FSDP) is `checkpoint export` of its checkpoint;
    # inspect and verify read it as any DCP checkpoint.
    assert main(["checkpoint", "verify", str(fsdp)]) == 0
    assert main(["checkpoint", "inspect", str(fsdp)]) == 0
    assert "fsdp, written by 2 process(es)" in capsys.readouterr().out
    assert main(["checkpoint", "export", str(fsdp), str(tmp_path / "export.pt")]) == 0
    exported = torch.load(tmp_path / "export.pt", weights_only=True)["state_dict"]
    gathered = torch.load(fsdp / "backbone.pt", weights_only=True)["state_dict"]
    assert exported.keys() == gathered.keys()
    assert all(torch.equal(exported[k], gathered[k]) for k in gathered)

    # The 2-process fsdp checkpoint loads into one process as a resume loads it.
    config = load_config(DEMO, [*fp32, "train.engine=single"])
    model = build_model(config)
    optimizer = build_optimizer(model, config.optim, config.data.batch_size)
    engine = Engine(torch.device("cpu"), "fp32", None)
    engine.setup(model, optimizer)
    scheduler = build_scheduler(optimizer, config.optim, STEPS, 10)
    manager = CheckpointManager(fsdp / "checkpoints", engine, scheduler, TrainState())
    assert manager.load(fsdp / "checkpoints" / f"step_{STEPS:09d}").step == STEPS
    trunk = {k.removeprefix("backbone.trunk."): v for k, v in model.state_dict().items()}
    assert all(torch.equal(trunk[k], v) for k, v in gathered.items())
    assert optimizer.state, "the optimizer's momenta are restored"


def test_mae_vit_tiny_on_fsdp_follows_ddp(fp32, tmp_path):
    steps = 10
    mae = [o for o in fp32 if not o.startswith(("method.", "train.max_steps"))] + [
        "method.decoder_dim=32", "method.decoder_depth=1", "method.decoder_heads=2",
        f"train.max_steps={steps}",
        "train.image_every=5",  # reconstructions: the sharded model outside its forward
    ]  # fmt: skip
    # The FSDP run also monitored (online kNN and linear classifier on the sharded model):
    # it must still end as the unmonitored DDP run, bit for bit.
    monitor = ["monitor.enabled=true", "monitor.every_steps=5", "monitor.bank_size=40",
               "monitor.test_size=30", "monitor.linear=true"]  # fmt: skip
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    finish(launch(2, [*mae, "train.engine=ddp", f"run_dir={ddp}"], config=MAE))
    finish(launch(2, [*mae, *monitor, "train.engine=fsdp", f"run_dir={fsdp}"], config=MAE))
    assert_follows(losses(ddp), losses(fsdp), range(1, steps + 1))
    final = f"checkpoints/step_{steps:09d}"
    assert_identical(ddp / final, fsdp / final, ignore=("hook_monitor.pt",))
    assert "reconstruction/output" in read_image_tags(fsdp)
    assert sorted(dict(read_scalars(fsdp / "tb", "monitor/knn_top1"))) == [5, 10]


def read_image_tags(run_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 1})
    events.Reload()
    return events.Tags()["images"]
