"""What a method's forward pass returns to the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StepOutput:
    """The loss to back-propagate, detached scalars to log and, where the method has them,
    the backbone's detached features of every view (an online classifier learns from them)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    # (views x batch, dim), the views concatenated in order; None: the method has none
    features: torch.Tensor | None = None
