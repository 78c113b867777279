import json
import random
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from selfsup.errors import CheckpointError
from selfsup.pipelines.checkpoint import (
    CheckpointManager,
    TrainState,
    find_latest,
    list_checkpoints,
    read_meta,
)
from selfsup.pipelines.config import OptimConfig
from selfsup.pipelines.engines import Engine, cpu_engine
from selfsup.pipelines.optim import build_optimizer, build_scheduler


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
    engine = cpu_engine()
    engine.setup(model, optimizer)
    return Setup(engine, model, optimizer, scheduler)


def save(manager: CheckpointManager, setup: Setup, step: int):
    return manager.save(setup.engine, setup.scheduler, TrainState(step, step // 4))


def test_round_trip_restores_model_optimizer_scheduler_and_rng(tmp_path):
    a = make()
    a.train(5)
    manager = CheckpointManager(tmp_path)
    random.seed(42)
    path = save(manager, a, 5)
    expected_torch, expected_py = torch.rand(3), random.random()

    b = make(seed=1)
    assert manager.load(path, b.engine, b.scheduler) == TrainState(5, 1)
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
    path = save(CheckpointManager(tmp_path), make(), 1)
    rng = torch.load(path / "rng_rank0.pt", weights_only=True)
    assert set(rng) >= {"torch_cpu", "python"}


def test_latest_pointer_and_layout(tmp_path):
    setup = make()
    manager = CheckpointManager(tmp_path, keep_last=5)
    for step in (2, 4):
        save(manager, setup, step)
    assert (tmp_path / "latest").read_text().strip() == "step_000000004"
    meta = read_meta(tmp_path / "step_000000004")
    assert meta["step"] == 4 and meta["engine"] == "single" and meta["world_size"] == 1
    assert find_latest(tmp_path) == tmp_path / "step_000000004"


def test_unfinished_and_stale_entries_are_ignored(tmp_path):
    setup = make()
    manager = CheckpointManager(tmp_path, keep_last=5)
    save(manager, setup, 2)
    save(manager, setup, 4)
    # A crash mid-write leaves a temporary folder; one after the rename leaves a stale pointer.
    (tmp_path / ".step_000000006.tmp").mkdir()
    (tmp_path / "latest").write_text("step_000000002\n")
    assert find_latest(tmp_path) == tmp_path / "step_000000004"
    (tmp_path / "latest").write_text("step_000000099\n")
    assert find_latest(tmp_path) == tmp_path / "step_000000004"
    # A folder without meta.json (killed before the rename) never counts.
    (tmp_path / "step_000000008").mkdir()
    assert find_latest(tmp_path) == tmp_path / "step_000000004"
    save(manager, setup, 6)
    assert not (tmp_path / ".step_000000006.tmp").exists()


def test_retention_keeps_last_n_and_every_kth(tmp_path):
    setup = make()
    manager = CheckpointManager(tmp_path, keep_last=2, keep_every=4)
    for step in range(1, 8):
        save(manager, setup, step)
    assert [int(p.name[5:]) for p in list_checkpoints(tmp_path)] == [4, 6, 7]


def test_other_model_is_refused_with_the_differing_keys(tmp_path):
    path = save(CheckpointManager(tmp_path), make(width=8), 1)
    other = make(width=16)
    with pytest.raises(
        CheckpointError, match=r"different shapes: .*0.weight \(8, 4\) in checkpoint vs \(16, 4\)"
    ):
        CheckpointManager(tmp_path).load(path, other.engine, other.scheduler)
    bigger = make(model=nn.Sequential(*make().model, nn.Linear(2, 2)))
    with pytest.raises(CheckpointError, match="missing from checkpoint: 4.bias, 4.weight"):
        CheckpointManager(tmp_path).load(path, bigger.engine, bigger.scheduler)


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
    path = save(CheckpointManager(tmp_path), setup, 1)
    shard = next(path.glob("*.distcp"))
    data = shard.read_bytes()
    shard.write_bytes(data[:100])
    fresh = make()
    with pytest.raises(CheckpointError, match=f"truncated shard file\\(s\\) {shard.name}"):
        CheckpointManager(tmp_path).load(path, fresh.engine, fresh.scheduler)
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"missing shard file\\(s\\) {shard.name}"):
        CheckpointManager(tmp_path).load(path, fresh.engine, fresh.scheduler)


def test_corrupt_tensor_bytes_are_reported(tmp_path):
    path = save(CheckpointManager(tmp_path), make(), 1)
    shard = next(path.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[:64] = b"\x00" * 64  # same length, garbage content
    shard.write_bytes(bytes(data))
    fresh = make()
    with pytest.raises(CheckpointError, match="incomplete or corrupt"):
        CheckpointManager(tmp_path).load(path, fresh.engine, fresh.scheduler)


def test_deepspeed_checkpoint_is_refused_by_a_dcp_engine(tmp_path):
    path = save(CheckpointManager(tmp_path), make(), 1)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps(meta | {"engine": "deepspeed"}))
    fresh = make()
    with pytest.raises(CheckpointError, match="written by the DeepSpeed engine; resume it with"):
        CheckpointManager(tmp_path).load(path, fresh.engine, fresh.scheduler)
