"""SimCLR (Chen et al. 2020): contrastive learning between augmented views.

The projection head and the NT-Xent loss are lightly's; this module only
wires them to a backbone and to any number of views.
"""

from __future__ import annotations

from itertools import combinations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import nn

from selfsup.ssl.backbones import Backbone
from selfsup.ssl.outputs import StepOutput


class SimCLR(nn.Module):
    """Backbone + 2-layer MLP projection head trained with NT-Xent."""

    def __init__(
        self,
        backbone: Backbone,
        proj_hidden_dim: int | None = None,
        proj_output_dim: int = 128,
        temperature: float = 0.5,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.backbone = backbone
        hidden = proj_hidden_dim or backbone.feature_dim
        self.projection_head = SimCLRProjectionHead(backbone.feature_dim, hidden, proj_output_dim)
        # gather_distributed: negatives come from every rank's batch, as in the paper.
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=gather_distributed)

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        """NT-Xent averaged over every pair of views (one pair for the usual two views)."""
        if len(views) < 2:
            raise ValueError(f"SimCLR needs at least 2 views per image, got {len(views)}")
        batch = views[0].shape[0]
        # One backbone pass over all views keeps BatchNorm statistics shared, as in the paper.
        features = self.backbone(torch.cat(views))
        # The loss runs in float32: normalised dot products divided by a small
        # temperature overflow bf16/fp16 precision.
        projections = self.projection_head(features).float().split(batch)
        pairs = list(combinations(range(len(views)), 2))
        loss = sum(self.criterion(projections[i], projections[j]) for i, j in pairs) / len(pairs)
        assert isinstance(loss, torch.Tensor)
        return StepOutput(loss=loss, metrics={"loss/ntxent": loss.detach()})
