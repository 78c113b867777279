import json
import random

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
from selfsup.pipelines.optim import build_optimizer, build_scheduler


def make(seed=0, width=8):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(4, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 2)
    )
    optimizer = build_optimizer(model, OptimConfig(name="adamw", base_lr=0.01), 256)
    scheduler = build_scheduler(
        optimizer, OptimConfig(warmup_epochs=1), total_steps=20, steps_per_epoch=4
    )
    return model, optimizer, scheduler


def train_steps(model, optimizer, scheduler, n):
    for _ in range(n):
        model(torch.randn(8, 4)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()


def save(manager, model, optimizer, scheduler, step):
    return manager.save(
        model, optimizer, scheduler, TrainState(step, step // 4), {"grad_scaler": {}}
    )


def test_round_trip_restores_model_optimizer_scheduler_and_rng(tmp_path):
    model, optimizer, scheduler = make()
    train_steps(model, optimizer, scheduler, 5)
    manager = CheckpointManager(tmp_path)
    random.seed(42)
    path = save(manager, model, optimizer, scheduler, 5)
    expected_torch, expected_py = torch.rand(3), random.random()

    model2, optimizer2, scheduler2 = make(seed=1)
    state, engine_state = manager.load(path, model2, optimizer2, scheduler2)
    assert state == TrainState(5, 1) and engine_state == {"grad_scaler": {}}
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    s1, s2 = optimizer.state_dict()["state"], optimizer2.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)
    assert scheduler2.last_epoch == 5 and scheduler2.get_last_lr() == scheduler.get_last_lr()
    assert torch.equal(torch.rand(3), expected_torch) and random.random() == expected_py
    # Continuing both gives identical parameters.
    torch.manual_seed(9)
    train_steps(model, optimizer, scheduler, 2)
    torch.manual_seed(9)
    train_steps(model2, optimizer2, scheduler2, 2)
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters(), strict=True)
    )


def test_latest_pointer_and_layout(tmp_path):
    model, optimizer, scheduler = make()
    manager = CheckpointManager(tmp_path, keep_last=5)
    for step in (2, 4):
        save(manager, model, optimizer, scheduler, step)
    assert (tmp_path / "latest").read_text().strip() == "step_000000004"
    assert read_meta(tmp_path / "step_000000004")["step"] == 4
    assert find_latest(tmp_path) == tmp_path / "step_000000004"


def test_unfinished_and_stale_entries_are_ignored(tmp_path):
    model, optimizer, scheduler = make()
    manager = CheckpointManager(tmp_path, keep_last=5)
    save(manager, model, optimizer, scheduler, 2)
    save(manager, model, optimizer, scheduler, 4)
    # A crash mid-write leaves a temporary folder; one after the rename leaves a stale pointer.
    (tmp_path / ".step_000000006.tmp").mkdir()
    (tmp_path / "latest").write_text("step_000000002\n")
    assert find_latest(tmp_path) == tmp_path / "step_000000004"
    (tmp_path / "latest").write_text("step_000000099\n")
    assert find_latest(tmp_path) == tmp_path / "step_000000004"
    # A folder without meta.json (killed before the rename) never counts.
    incomplete = tmp_path / "step_000000008"
    incomplete.mkdir()
    assert find_latest(tmp_path) == tmp_path / "step_000000004"
    save(manager, model, optimizer, scheduler, 6)
    assert not (tmp_path / ".step_000000006.tmp").exists()


def test_retention_keeps_last_n_and_every_kth(tmp_path):
    model, optimizer, scheduler = make()
    manager = CheckpointManager(tmp_path, keep_last=2, keep_every=4)
    for step in range(1, 8):
        save(manager, model, optimizer, scheduler, step)
    steps = [int(p.name[5:]) for p in list_checkpoints(tmp_path)]
    assert steps == [4, 6, 7]


def test_other_model_is_refused_with_the_differing_keys(tmp_path):
    model, optimizer, scheduler = make(width=8)
    path = save(CheckpointManager(tmp_path), model, optimizer, scheduler, 1)
    other, other_opt, other_sched = make(width=16)
    with pytest.raises(
        CheckpointError, match=r"different shapes: .*0.weight \(8, 4\) in checkpoint vs \(16, 4\)"
    ):
        CheckpointManager(tmp_path).load(path, other, other_opt, other_sched)
    bigger = nn.Sequential(*make()[0], nn.Linear(2, 2))
    opt = build_optimizer(bigger, OptimConfig(), 256)
    sched = build_scheduler(opt, OptimConfig(), 10, 2)
    with pytest.raises(CheckpointError, match="missing from checkpoint: 4.bias, 4.weight"):
        CheckpointManager(tmp_path).load(path, bigger, opt, sched)


def test_not_a_checkpoint_and_corrupt_meta(tmp_path):
    with pytest.raises(CheckpointError, match="not a selfsup checkpoint"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="has format 'other'"):
        read_meta(tmp_path)


def test_corrupt_tensor_file_is_reported(tmp_path):
    model, optimizer, scheduler = make()
    path = save(CheckpointManager(tmp_path), model, optimizer, scheduler, 1)
    shard = next(path.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="incomplete or corrupt"):
        CheckpointManager(tmp_path).load(path, *make())
