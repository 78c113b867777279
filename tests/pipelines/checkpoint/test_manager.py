import json
import random
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from selfsup.errors import CheckpointError
from selfsup.pipelines.checkpoint.folders import find_latest, list_checkpoints, read_meta
from selfsup.pipelines.checkpoint.manager import Cadence, CheckpointManager, TrainState
from selfsup.pipelines.checkpoint.manifest import write_manifest
from selfsup.pipelines.checkpoint.tools import inspect_checkpoint, verify_checkpoint
from selfsup.pipelines.config import OptimConfig
from selfsup.pipelines.runtime.engines import Engine
from selfsup.pipelines.train.optim import build_optimizer, build_scheduler


@dataclass
class Setup:
    """A small model with AdamW and a schedule, set up on a CPU engine."""

    engine: Engine
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    def train(self, steps: int) -> None:
        for _ in range(steps):
            self.engine.backward(self.model(torch.randn(8, 4)).pow(2).mean())
            self.engine.step()
            self.scheduler.step()


def make(seed: int = 0, model: nn.Module | None = None, width: int = 8) -> Setup:
    torch.manual_seed(seed)
    model = model or nn.Sequential(
        nn.Linear(4, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 2)
    )
    optimizer = build_optimizer(model, OptimConfig(name="adamw", base_lr=0.01), 256)
    scheduler = build_scheduler(
        optimizer, OptimConfig(warmup_epochs=1), total_steps=20, steps_per_epoch=4
    )
    engine = Engine(torch.device("cpu"), "fp32", None)
    engine.setup(model, optimizer)
    return Setup(engine, model, optimizer, scheduler)


def manager_for(directory, setup: Setup, **cadence) -> CheckpointManager:
    return CheckpointManager(
        directory, setup.engine, setup.scheduler, TrainState(), Cadence(**cadence)
    )


def save(directory, setup: Setup, step: int, **cadence):
    manager = manager_for(directory, setup, **cadence)
    manager.state.step, manager.state.epoch = step, step // 4
    return manager.save(step, force=True)


def with_fp16_scaler(setup: Setup) -> Setup:
    """The loss scaler fp16 training runs with (on the CPU here: fp16 autocast needs a GPU)."""
    setup.engine.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2)
    return setup


def test_an_fp16_loss_scale_round_trips_through_a_checkpoint(tmp_path):
    a = with_fp16_scaler(make())
    a.train(4)  # 4 finite steps: the scale doubles twice (growth every 2 steps)
    a.engine.backward(a.model(torch.full((8, 4), float("inf"))).sum())  # an overflow: halved
    a.engine.step()
    scale, tracker = a.engine.scaler.get_scale(), a.engine.scaler.state_dict()["_growth_tracker"]
    assert scale == 2048.0 and tracker == 0
    a.train(1)  # one step into the next growth interval
    path = save(tmp_path, a, 6)
    assert read_meta(path)["engine_state"]["grad_scaler"]["scale"] == 2048.0
    b = with_fp16_scaler(make(seed=1))
    manager_for(tmp_path, b).load(path)
    assert b.engine.scaler.get_scale() == 2048.0
    assert b.engine.scaler.state_dict() == a.engine.scaler.state_dict()
    a.train(1)
    b.train(1)
    assert a.engine.scaler.get_scale() == b.engine.scaler.get_scale() == 4096.0


def test_round_trip_restores_model_optimizer_scheduler_and_rng(tmp_path):
    a = make()
    a.train(5)
    random.seed(42)
    path = save(tmp_path, a, 5)
    expected_torch, expected_py = torch.rand(3), random.random()

    b = make(seed=1)
    assert manager_for(tmp_path, b).load(path) == TrainState(5, 1)
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    s1, s2 = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)
    assert b.scheduler.last_epoch == 5 and b.scheduler.get_last_lr() == a.scheduler.get_last_lr()
    assert torch.equal(torch.rand(3), expected_torch) and random.random() == expected_py
    # Continuing both gives identical parameters.
    torch.manual_seed(9)
    a.train(2)
    torch.manual_seed(9)
    b.train(2)
    assert all(
        torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True)
    )


def test_rng_files_load_weights_only(tmp_path):
    path = save(tmp_path, make(), 1)
    rng = torch.load(path / "rng_rank0.pt", weights_only=True)
    assert set(rng) >= {"torch_cpu", "python"}


def test_latest_pointer_and_layout(tmp_path):
    setup = make()
    for step in (2, 4):
        save(tmp_path, setup, step, keep_last=5)
    assert (tmp_path / "latest").read_text().strip() == "step_000000004"
    meta = read_meta(tmp_path / "step_000000004")
    assert meta["step"] == 4 and meta["engine"] == "single" and meta["world_size"] == 1
    assert find_latest(tmp_path) == tmp_path / "step_000000004"


def test_unfinished_and_stale_entries_are_ignored(tmp_path):
    setup = make()
    save(tmp_path, setup, 2, keep_last=5)
    save(tmp_path, setup, 4, keep_last=5)
    # A crash mid-write leaves a temporary folder; one after the rename leaves a stale pointer.
    (tmp_path / ".step_000000006.tmp").mkdir()
    (tmp_path / "latest").write_text("step_000000002\n")
    assert find_latest(tmp_path) == tmp_path / "step_000000004"
    (tmp_path / "latest").write_text("step_000000099\n")
    assert find_latest(tmp_path) == tmp_path / "step_000000004"
    # A folder without meta.json (killed before the rename) never counts.
    (tmp_path / "step_000000008").mkdir()
    assert find_latest(tmp_path) == tmp_path / "step_000000004"
    save(tmp_path, setup, 6, keep_last=5)
    assert not (tmp_path / ".step_000000006.tmp").exists()


def test_retention_keeps_last_n_and_every_kth(tmp_path):
    setup = make()
    for step in range(1, 8):
        save(tmp_path, setup, step, keep_last=2, keep_every=4)
    assert [int(p.name[5:]) for p in list_checkpoints(tmp_path)] == [4, 6, 7]


def test_other_model_is_refused_with_the_differing_keys(tmp_path):
    path = save(tmp_path, make(width=8), 1)
    other = make(width=16)
    with pytest.raises(
        CheckpointError, match=r"different shapes: .*0.weight \(8, 4\) in checkpoint vs \(16, 4\)"
    ):
        manager_for(tmp_path, other).load(path)
    bigger = make(model=nn.Sequential(*make().model, nn.Linear(2, 2)))
    with pytest.raises(CheckpointError, match="missing from checkpoint: 4.bias, 4.weight"):
        manager_for(tmp_path, bigger).load(path)


def test_not_a_checkpoint_and_corrupt_meta(tmp_path):
    with pytest.raises(CheckpointError, match="not a selfsup checkpoint"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="has format 'other'"):
        read_meta(tmp_path)


def test_missing_and_truncated_shards_are_named(tmp_path):
    setup = make()
    path = save(tmp_path, setup, 1)
    shard = next(path.glob("*.distcp"))
    data = shard.read_bytes()
    shard.write_bytes(data[:100])
    fresh = make()
    with pytest.raises(CheckpointError, match=f"damaged \\(truncated or grown {shard.name}\\)"):
        manager_for(tmp_path, fresh).load(path)
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"damaged \\(missing {shard.name}\\)"):
        manager_for(tmp_path, fresh).load(path)
    # Without the manifest (an older checkpoint), DCP's own index still names them.
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=f"missing shard file\\(s\\) {shard.name}"):
        manager_for(tmp_path, fresh).load(path)


def test_corrupt_tensor_bytes_are_reported(tmp_path):
    path = save(tmp_path, make(), 1)
    shard = next(path.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[:64] = b"\x00" * 64  # same length, garbage content
    shard.write_bytes(bytes(data))
    fresh = make()
    with pytest.raises(CheckpointError, match="incomplete or corrupt"):
        manager_for(tmp_path, fresh).load(path)


def test_deepspeed_checkpoint_is_refused_by_a_dcp_engine(tmp_path):
    path = save(tmp_path, make(), 1)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps(meta | {"engine": "deepspeed"}))
    write_manifest(path)  # the manifest covers meta.json: re-listed, as after a real save
    fresh = make()
    with pytest.raises(CheckpointError, match="written by the DeepSpeed engine; resume it with"):
        manager_for(tmp_path, fresh).load(path)


def test_the_manager_decides_the_cadence_and_saves_a_step_once(tmp_path):
    setup = make()
    manager = manager_for(tmp_path, setup, every_steps=3, total_steps=7)
    saved = []
    for step in range(1, 8):
        manager.state.step = step
        if manager.save(step) is not None:
            saved.append(step)
    assert saved == [3, 6, 7]  # every 3 steps and the last one
    assert manager.save(7, force=True) is None  # already saved: not written twice
    manager.state.step = 8
    assert manager.save(8) is None and manager.save(8, force=True) is not None


def test_the_scheduler_is_restored_through_load_state_dict(tmp_path, monkeypatch):
    a = make()
    a.train(3)
    path = save(tmp_path, a, 3)
    b = make()
    calls = []
    original = type(b.scheduler).load_state_dict
    monkeypatch.setattr(
        type(b.scheduler),
        "load_state_dict",
        lambda self, state: calls.append(state) or original(self, state),
    )
    manager_for(tmp_path, b).load(path)
    assert calls and calls[0]["last_epoch"] == 3
    assert b.scheduler.get_last_lr() == a.scheduler.get_last_lr()


def test_latest_never_leads_out_of_the_checkpoint_folder(tmp_path):
    setup = make()
    mine = tmp_path / "mine" / "checkpoints"
    other = tmp_path / "other" / "checkpoints"
    save(mine, setup, 2)
    save(other, setup, 9)
    for escape in ("../../other/checkpoints/step_000000009", str(other / "step_000000009")):
        (mine / "latest").write_text(escape + "\n")
        assert find_latest(mine) == mine / "step_000000002"


def test_the_manifest_lists_every_file_and_inspect_names_damage(tmp_path):
    path = save(tmp_path, make(), 1)
    listed = json.loads((path / "manifest.json").read_text())["files"]
    on_disk = {p.name for p in path.iterdir()} - {"manifest.json"}  # meta.json is listed too
    assert set(listed) == on_disk and all(len(e["sha256"]) == 64 for e in listed.values())
    assert inspect_checkpoint(path).intact and "intact" in verify_checkpoint(path)
    shard = next(path.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same length, one bit pattern changed: only the hash sees it
    shard.write_bytes(bytes(data))
    summary = inspect_checkpoint(path)
    assert not summary.intact
    assert f"DAMAGED: altered (SHA-256 differs) {shard.name}" in "\n".join(summary.lines())
    with pytest.raises(CheckpointError, match=f"altered \\(SHA-256 differs\\) {shard.name}"):
        verify_checkpoint(path)
    shard.write_bytes(bytes(data[:-10]))
    assert f"truncated or grown {shard.name}" in inspect_checkpoint(path).integrity_text()
