"""Optimizers (SGD, LARS, AdamW) and the warmup + cosine learning-rate schedule.

LARS, the parameter split for weight decay and the schedule are lightly's.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler
from torch import nn

from selfsup.registry import Registry

if TYPE_CHECKING:  # config.py reads OPTIMIZERS; at run time this module needs no config
    from selfsup.pipelines.config import OptimConfig

REFERENCE_BATCH = 256


def peak_lr(cfg: OptimConfig, global_batch: int) -> float:
    """Linear scaling rule: ``base_lr`` is the rate for 256 images per step."""
    return cfg.base_lr * global_batch / REFERENCE_BATCH


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Weight-decayed and non-decayed groups (biases and norm layers are not decayed)."""
    if not cfg.exclude_bias_and_norm:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    decay, no_decay = get_weight_decay_parameters([model])
    decay = [p for p in decay if p.requires_grad]
    no_decay = [p for p in no_decay if p.requires_grad]
    return [
        {"params": decay, "name": "decay"},
        {"params": no_decay, "name": "no_decay", "weight_decay": 0.0},
    ]


OptimizerBuilder = Callable[[list[dict[str, Any]], float, "OptimConfig"], torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerBuilder] = Registry("optimizer")


@OPTIMIZERS.decorator("sgd")
def _sgd(groups: list[dict[str, Any]], lr: float, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@OPTIMIZERS.decorator("lars")
def _lars(groups: list[dict[str, Any]], lr: float, cfg: OptimConfig) -> torch.optim.Optimizer:
    # LARS skips its trust-ratio scaling for groups with weight_decay 0,
    # which is exactly the biases and norms of param_groups (as in SimCLR).
    return LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@OPTIMIZERS.decorator("adamw")
def _adamw(groups: list[dict[str, Any]], lr: float, cfg: OptimConfig) -> torch.optim.Optimizer:
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=cfg.weight_decay)


def build_optimizer(model: nn.Module, cfg: OptimConfig, global_batch: int) -> torch.optim.Optimizer:
    """The optimizer ``cfg.name`` over the model's parameters, at the scaled peak rate."""
    return OPTIMIZERS.get(cfg.name)(param_groups(model, cfg), peak_lr(cfg, global_batch), cfg)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, steps_per_epoch: int
) -> CosineWarmupScheduler:
    """Linear warmup over ``warmup_epochs``, then cosine decay to ``min_lr_ratio`` x peak."""
    warmup_steps = min(math.ceil(cfg.warmup_epochs * steps_per_epoch), total_steps)
    return CosineWarmupScheduler(
        optimizer,
        warmup_epochs=warmup_steps,
        max_epochs=total_steps,
        end_value=cfg.min_lr_ratio,
    )


# Set by the scheduler from the schedule's position, not by the config.
SCHEDULED = ("lr", "initial_lr")


@contextmanager
def configured_hyperparameters(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Keep the optimizer's configured hyperparameters across loading a state into it.

    ``Optimizer.load_state_dict`` takes the saved param groups' settings
    (weight decay, momentum, betas) along with the state; after the block
    they are the configured ones again, and the learning rate stays the
    scheduler's.
    """
    configured = [
        {k: v for k, v in group.items() if k not in ("params", *SCHEDULED)}
        for group in optimizer.param_groups
    ]
    yield
    for group, settings in zip(optimizer.param_groups, configured, strict=True):
        group.update(settings)


def apply_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Set each group's learning rate to the schedule's value at its current position.

    After a resume the optimizer holds the rate the checkpoint was saved with;
    when the schedule changed since (a longer run), the next step must use the
    new schedule's rate. An unchanged schedule gives the same value, bit for
    bit (the scheduler's own expression at the same position).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # get_lr() outside step() warns
        rates = scheduler.get_lr()
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
