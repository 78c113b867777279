import itertools
import math

import pytest
import torch
from lightly.utils.lars import LARS
from torch import nn

from selfsup.pipelines.config import OptimConfig
from selfsup.pipelines.train.optim import build_optimizer, build_scheduler, peak_lr


def model():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)
    )


def test_linear_lr_scaling_rule():
    assert peak_lr(OptimConfig(base_lr=0.3), 512) == pytest.approx(0.6)


@pytest.mark.parametrize(
    "name, cls", [("sgd", torch.optim.SGD), ("lars", LARS), ("adamw", torch.optim.AdamW)]
)
def test_optimizers_and_weight_decay_groups(name, cls):
    optimizer = build_optimizer(model(), OptimConfig(name=name, weight_decay=0.1), 256)
    assert isinstance(optimizer, cls)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    # conv and linear weights decay; their biases and the BatchNorm parameters do not
    assert len(decay["params"]) == 2 and len(no_decay["params"]) == 4


def test_warmup_then_cosine_to_the_floor():
    optimizer = build_optimizer(model(), OptimConfig(name="sgd", base_lr=0.256), 256)
    cfg = OptimConfig(warmup_epochs=2, min_lr_ratio=0.1)
    scheduler = build_scheduler(optimizer, cfg, total_steps=100, steps_per_epoch=5)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] < lrs[5] < lrs[9]  # linear warmup over 10 steps
    assert max(lrs) == pytest.approx(0.256, rel=1e-6)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(lrs[10:]))  # then decays
    assert lrs[-1] == pytest.approx(0.0256, rel=1e-3)
    assert not any(math.isnan(lr) for lr in lrs)


def test_a_resumed_optimizer_takes_the_configs_settings_and_the_new_schedules_rate():
    from selfsup.pipelines.checkpoint.manager import (
        restore_scheduler_position,
        scheduler_position,
    )
    from selfsup.pipelines.train.optim import apply_schedule, configured_hyperparameters

    def make(weight_decay: float, total_steps: int):
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        cfg = OptimConfig(name="sgd", base_lr=0.256, weight_decay=weight_decay, warmup_epochs=0)
        optimizer = build_optimizer(model, cfg, 256)
        return model, optimizer, build_scheduler(optimizer, cfg, total_steps, steps_per_epoch=4)

    model, optimizer, scheduler = make(weight_decay=1e-4, total_steps=2)
    for _ in range(2):
        model(torch.randn(3, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.0  # the end of the short schedule
    saved, position = optimizer.state_dict(), scheduler_position(scheduler)

    _, longer, longer_schedule = make(weight_decay=0.05, total_steps=8)
    with configured_hyperparameters(longer):
        longer.load_state_dict(saved)
    restore_scheduler_position(longer_schedule, position)
    apply_schedule(longer_schedule)
    assert longer.param_groups[0]["weight_decay"] == 0.05  # the config's, not the checkpoint's
    assert longer.state_dict()["state"][0]["momentum_buffer"] is not None  # the state is kept
    expected = 0.256 * longer_schedule.lr_lambdas[0](2)
    assert longer.param_groups[0]["lr"] == expected > 0  # the new schedule at step 2
