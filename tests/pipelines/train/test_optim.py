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
