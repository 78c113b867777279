"""Linear classifier on frozen, cached features (the standard linear-probe protocol).

Features are standardised with the training split's mean and standard
deviation (the parameter-free BatchNorm of MAE's linear probe), then one
``nn.Linear`` is trained with AdamW and a cosine schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LinearResult:
    top1: float  # test accuracy, %
    train_top1: float  # training accuracy, % (a large gap means over-fitting)


def train_linear_classifier(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 512,
    seed: int = 0,
) -> LinearResult:
    mean = train_features.mean(0, keepdim=True)
    std = train_features.std(0, keepdim=True).clamp_min(1e-6)
    x_train = (train_features - mean) / std
    x_test = (test_features - mean) / std
    generator = torch.Generator().manual_seed(seed)
    classifier = nn.Linear(x_train.shape[1], num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier.reset_parameters()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, -(-len(x_train) // batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(classifier(x_train[index]), train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        test_top1 = _accuracy(classifier(x_test), test_labels)
        train_top1 = _accuracy(classifier(x_train), train_labels)
    return LinearResult(top1=test_top1, train_top1=train_top1)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()
