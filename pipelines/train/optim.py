"""Optimizers (SGD, LARS, AdamW) and the warmup + cosine learning-rate schedule.

LARS, the parameter split for weight decay and the schedule are lightly's.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler
from torch import nn

from selfsup.pipelines.config import OptimConfig, register_choices
from selfsup.registry import Registry

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


def layer_decay_groups(
    model: nn.Module, trunk: nn.Module, cfg: OptimConfig, decay: float
) -> list[dict[str, Any]]:
    """Layer-wise learning-rate decay (MAE/BEiT fine-tuning) for a timm ViT ``trunk`` in ``model``.

    timm's ``param_groups_layer_decay`` numbers the trunk's layers (patch
    embedding 0, block ``i`` as ``i + 1``, the final norm ``depth``) and
    scales each by ``decay ** (depth - layer)``, the trunk's top at the full
    rate. Here the head is one layer above the trunk (as in MAE's
    ``param_groups_lrd``), so every trunk scale takes one more factor of
    ``decay``: block ``i`` trains at ``lr * decay ** (depth - i)``, the patch
    embedding at ``lr * decay ** (depth + 1)``, and every parameter of
    ``model`` outside the trunk (the head) at the full rate.
    """
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(
        trunk,
        weight_decay=cfg.weight_decay,
        layer_decay=decay,
        no_weight_decay_list=list(getattr(trunk, "no_weight_decay", set)()),
    )
    for group in groups:
        group["lr_scale"] = group.get("lr_scale", 1.0) * decay
    in_trunk = {id(p) for p in trunk.parameters()}
    rest = [p for p in model.parameters() if id(p) not in in_trunk and p.requires_grad]
    decayed = [p for p in rest if p.ndim > 1]
    plain = [p for p in rest if p.ndim <= 1]
    groups += [
        {"params": decayed, "lr_scale": 1.0, "weight_decay": cfg.weight_decay, "name": "head"},
        {"params": plain, "lr_scale": 1.0, "weight_decay": 0.0, "name": "head_no_decay"},
    ]  # timm's groups already hold only parameters that train (a frozen one is skipped)
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module,
    cfg: OptimConfig,
    global_batch: int,
    groups: list[dict[str, Any]] | None = None,
) -> torch.optim.Optimizer:
    """The optimizer ``cfg.name`` over ``groups`` (default :func:`param_groups`) at the peak rate.

    A group's ``lr_scale`` (layer-wise decay) multiplies its rate; the schedule
    then scales every group by the same factor.
    """
    groups = groups if groups is not None else param_groups(model, cfg)
    peak = peak_lr(cfg, global_batch)
    optimizer = OPTIMIZERS.get(cfg.name)(groups, peak, cfg)
    for group in optimizer.param_groups:
        group["lr"] = peak * group.get("lr_scale", 1.0)
    return optimizer


# (optimizer, config, total steps, steps per epoch, warmup steps) -> schedule
ScheduleBuilder = Callable[
    [torch.optim.Optimizer, "OptimConfig", int, int, int], torch.optim.lr_scheduler.LRScheduler
]
SCHEDULES: Registry[ScheduleBuilder] = Registry("schedule")


@SCHEDULES.decorator("cosine")
def _cosine(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total: int, per_epoch: int, warmup: int
) -> torch.optim.lr_scheduler.LRScheduler:
    return CosineWarmupScheduler(
        optimizer, warmup_epochs=warmup, max_epochs=total, end_value=cfg.min_lr_ratio
    )


# step and onecycle are LambdaLRs (not StepLR/OneCycleLR) so that every
# schedule's state is its position alone, which a checkpoint restores and a
# longer resumed run re-shapes (see apply_schedule).
@SCHEDULES.decorator("step")
def _step(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total: int, per_epoch: int, warmup: int
) -> torch.optim.lr_scheduler.LRScheduler:
    milestones = sorted(int(e) * per_epoch for e in cfg.step_epochs)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return cfg.step_gamma ** sum(step >= m for m in milestones)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@SCHEDULES.decorator("onecycle")
def _onecycle(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total: int, per_epoch: int, warmup: int
) -> torch.optim.lr_scheduler.LRScheduler:
    # Smith's one-cycle: from 1/25 of the peak up over the warm-up (30% of the
    # run when warmup_epochs is 0), then cosine down to 1/1e4 of the start.
    rise = warmup or max(1, int(0.3 * total))
    start, end = 1 / 25, 1 / 25 / 1e4

    def factor(step: int) -> float:
        if step < rise:
            return start + (1 - start) * step / rise
        progress = (step - rise) / max(1, total - rise)
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup over ``warmup_epochs``, then ``cfg.schedule`` (cosine: to ``min_lr_ratio``)."""
    warmup_steps = min(math.ceil(cfg.warmup_epochs * steps_per_epoch), total_steps)
    build = SCHEDULES.get(cfg.schedule)
    return build(optimizer, cfg, total_steps, steps_per_epoch, warmup_steps)


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


register_choices("optim.name", OPTIMIZERS.names)
register_choices("optim.schedule", SCHEDULES.names)
register_choices("finetune.optim.name", OPTIMIZERS.names)
register_choices("finetune.optim.schedule", SCHEDULES.names)
