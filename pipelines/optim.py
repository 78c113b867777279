"""Optimizers (SGD, LARS, AdamW) and the warmup + cosine learning-rate schedule.

LARS, the parameter split for weight decay and the schedule are lightly's.
"""

from __future__ import annotations

import math

import torch
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler
from torch import nn

from selfsup.errors import ConfigError
from selfsup.pipelines.config import OptimConfig

REFERENCE_BATCH = 256


def peak_lr(cfg: OptimConfig, global_batch: int) -> float:
    """Linear scaling rule: ``base_lr`` is the rate for 256 images per step."""
    return cfg.base_lr * global_batch / REFERENCE_BATCH


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
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


def build_optimizer(model: nn.Module, cfg: OptimConfig, global_batch: int) -> torch.optim.Optimizer:
    lr = peak_lr(cfg, global_batch)
    groups = param_groups(model, cfg)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "lars":
        # LARS skips its trust-ratio scaling for groups with weight_decay 0,
        # which is exactly the biases and norms above (as in SimCLR).
        return LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        betas = (float(cfg.betas[0]), float(cfg.betas[1]))
        return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer '{cfg.name}'; use sgd, lars or adamw")


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
