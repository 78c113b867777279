"""SimCLR (Chen et al. 2020): contrastive learning between augmented views.

The projection head and the NT-Xent loss are lightly's; this module only
wires them to a backbone and to any number of views.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import nn

from selfsup.arguments import ArgumentError
from selfsup.ssl.backbones import Backbone
from selfsup.ssl.method import BuildContext, MethodConfig, check_positive, register_method
from selfsup.ssl.outputs import StepOutput


@dataclass
class SimCLRConfig(MethodConfig):
    """SimCLR's options (the run config's ``method:`` section when ``name: simclr``)."""

    name: str = "simclr"
    temperature: float = 0.5  # NT-Xent temperature
    proj_hidden_dim: int | None = None  # None: the backbone's feature dimension
    proj_output_dim: int = 128
    proj_num_layers: int = 2  # linear layers in the head; SimCLR v2 uses 3

    def check(self, context: BuildContext) -> None:
        check_positive(self.temperature, "temperature")
        check_positive(self.proj_output_dim, "proj_output_dim")
        check_positive(self.proj_num_layers, "proj_num_layers")
        if context.num_views < 2:
            raise ArgumentError(
                f"num_views must be >= 2 for SimCLR, got {context.num_views}", "num_views"
            )


@register_method("simclr", SimCLRConfig, features=True)
class SimCLR(nn.Module):
    """Backbone + 2-layer MLP projection head trained with NT-Xent."""

    def __init__(
        self,
        backbone: Backbone,
        proj_hidden_dim: int | None = None,
        proj_output_dim: int = 128,
        temperature: float = 0.5,
        gather_distributed: bool = False,
        proj_num_layers: int = 2,
    ) -> None:
        super().__init__()
        check_positive(temperature, "temperature")
        self.backbone = backbone
        hidden = proj_hidden_dim or backbone.feature_dim
        self.projection_head = SimCLRProjectionHead(
            backbone.feature_dim, hidden, proj_output_dim, num_layers=proj_num_layers
        )
        # gather_distributed: negatives come from every rank's batch, as in the paper.
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=gather_distributed)

    @classmethod
    def from_config(cls, backbone: Backbone, config: MethodConfig, context: BuildContext) -> SimCLR:
        assert isinstance(config, SimCLRConfig)
        return cls(backbone, gather_distributed=context.distributed, **config.options())

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
        return StepOutput(
            loss=loss, metrics={"loss/ntxent": loss.detach()}, features=features.detach()
        )
