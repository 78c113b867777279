"""Backbone registry: name -> network that maps images to pooled feature vectors.

Every backbone is a torchvision or timm model with its classifier removed,
wrapped in :class:`Backbone`, which records its feature dimension. The wrapped
network (``Backbone.trunk``) keeps its library's parameter names, so exported
weights load straight into ``torchvision.models.resnet18()`` (with
``fc = nn.Identity()``) or ``timm.create_model(name, num_classes=0)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from selfsup.errors import unknown_name

SOURCES = ("torchvision", "timm")


class Backbone(nn.Module):
    """A feature extractor: ``(B, 3, H, W)`` images to ``(B, feature_dim)`` features."""

    def __init__(self, trunk: nn.Module, feature_dim: int, name: str) -> None:
        super().__init__()
        self.trunk = trunk
        self.feature_dim = feature_dim
        self.name = name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images)


@dataclass(frozen=True)
class BackboneSpec:
    feature_dim: int
    build: Callable[[str, bool], nn.Module]  # (source, cifar_stem) -> trunk


def _resnet(name: str) -> Callable[[str, bool], nn.Module]:
    def build(source: str, cifar_stem: bool) -> nn.Module:
        if source == "torchvision":
            import torchvision

            trunk = getattr(torchvision.models, name)(weights=None)
            trunk.fc = nn.Identity()
        else:
            import timm

            trunk = timm.create_model(name, pretrained=False, num_classes=0)
        if cifar_stem:
            replace_with_cifar_stem(trunk)
        return trunk

    return build


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(feature_dim=512, build=_resnet("resnet18")),
    "resnet50": BackboneSpec(feature_dim=2048, build=_resnet("resnet50")),
}


def backbone_names() -> list[str]:
    return sorted(BACKBONES)


def build_backbone(name: str, source: str = "torchvision", cifar_stem: bool = False) -> Backbone:
    """Build a randomly initialised backbone by registry name."""
    spec = BACKBONES.get(name)
    if spec is None:
        raise unknown_name("backbone", name, backbone_names())
    if source not in SOURCES:
        raise unknown_name("backbone source", source, SOURCES)
    return Backbone(spec.build(source, cifar_stem), spec.feature_dim, name)


def replace_with_cifar_stem(resnet: nn.Module) -> None:
    """Swap the 7x7/2 conv and max-pool for a 3x3/1 conv, as for 32 px images.

    Without this a 32 px image is 8x8 after the stem and 1x1 at the last
    stage; with it the last stage sees 4x4 (SimCLR's CIFAR-10 variant).
    Works on torchvision and timm ResNets, which share the attribute names.
    """
    old: nn.Conv2d = resnet.conv1  # type: ignore[assignment]
    conv = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    resnet.conv1 = conv
    resnet.maxpool = nn.Identity()
