"""SimMIM-style masked image modelling for ResNets (Xie et al. 2022).

Random square patches of the input are replaced by a learned mask patch; the
dense ResNet encodes the whole image; a light decoder (one 1x1 convolution
and a pixel shuffle, SimMIM's linear head) predicts every pixel from the last
stage's feature map, and the loss is the mean absolute error on the masked
pixels only.

Why SimMIM rather than SparK: SparK avoids the mask leaking through dense
convolutions by running the ResNet as a sparse (submanifold) network, which
needs its own convolution kernels and a rewritten model. SimMIM works with
any torchvision or timm ResNet unchanged, at the cost SparK points out: the
network sees mask patches in training that it never sees at test time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.arguments import ArgumentError
from selfsup.ssl.backbones import Backbone, resnet_feature_map, resnet_stride
from selfsup.ssl.method import BuildContext, MethodConfig, check_ratio, register_method
from selfsup.ssl.outputs import StepOutput


def default_mask_patch_size(image_size: int) -> int:
    """SimMIM masks 32 px patches at 192-224 px; 1/8 of the side keeps that ratio."""
    return max(4, image_size // 8)


@dataclass
class SimMIMConfig(MethodConfig):
    """SimMIM's options (the run config's ``method:`` section when ``name: simmim``)."""

    name: str = "simmim"
    mask_ratio: float = 0.6  # share of the image hidden, in whole patches
    mask_patch_size: int | None = None  # masked square side; None: image_size / 8

    def check(self, context: BuildContext) -> None:
        check_ratio(self.mask_ratio, "mask_ratio")


@register_method("simmim", SimMIMConfig, reconstructs=True)
class SimMIM(nn.Module):
    """Masked image modelling around a ResNet backbone."""

    def __init__(
        self,
        backbone: Backbone,
        image_size: int,
        mask_ratio: float = 0.6,
        mask_patch_size: int | None = None,
    ) -> None:
        super().__init__()
        check_ratio(mask_ratio, "mask_ratio")
        if backbone.is_vit:
            raise ArgumentError(
                f"method=simmim works on ResNets here; for backbone={backbone.name} use method=mae",
                "method",
                "backbone",
            )
        patch = mask_patch_size or default_mask_patch_size(image_size)
        if image_size % patch:
            raise ArgumentError(
                f"image_size={image_size} is not divisible by mask_patch_size={patch}",
                "image_size",
                "mask_patch_size",
            )
        self.backbone = backbone
        self.mask_ratio = mask_ratio
        self.patch = patch
        self.grid = image_size // patch
        self.mask_token = nn.Parameter(torch.zeros(1, 3, patch, patch))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.stride = resnet_stride(backbone.trunk)
        if image_size % self.stride:
            raise ArgumentError(
                f"image_size={image_size} is not divisible by the ResNet's total stride "
                f"{self.stride}",
                "image_size",
            )
        channels = backbone.feature_dim
        self.decoder = nn.Sequential(
            nn.Conv2d(channels, self.stride**2 * 3, kernel_size=1), nn.PixelShuffle(self.stride)
        )

    @classmethod
    def from_config(cls, backbone: Backbone, config: MethodConfig, context: BuildContext) -> SimMIM:
        assert isinstance(config, SimMIMConfig)
        return cls(backbone, image_size=context.image_size, **config.options())

    def random_mask(self, batch: int, device: torch.device) -> torch.Tensor:
        """``(B, 1, H, W)`` float mask, 1 on masked pixels, from whole masked patches."""
        cells = self.grid * self.grid
        count = max(1, round(cells * self.mask_ratio))
        order = torch.rand(batch, cells, device=device).argsort(dim=1)
        grid = torch.zeros(batch, cells, device=device)
        grid.scatter_(1, order[:, :count], 1.0)
        grid = grid.view(batch, 1, self.grid, self.grid)
        return grid.repeat_interleave(self.patch, 2).repeat_interleave(self.patch, 3)

    def _mask_and_predict(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = self.random_mask(images.shape[0], images.device).to(images.dtype)
        token = self.mask_token.to(images.dtype).repeat(1, 1, self.grid, self.grid)
        masked = images * (1 - mask) + token * mask
        prediction = self.decoder(resnet_feature_map(self.backbone.trunk, masked))
        return masked, prediction, mask

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        images = torch.cat(views)
        _, prediction, mask = self._mask_and_predict(images)
        error = F.l1_loss(prediction.float(), images.float(), reduction="none")
        loss = (error * mask).sum() / (mask.sum() * images.shape[1] + 1e-5)
        return StepOutput(loss=loss, metrics={"loss/reconstruction": loss.detach()})

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Masked input and reconstruction (visible pixels kept), in the input's pixel space."""
        masked, prediction, mask = self._mask_and_predict(images)
        return {
            "masked": masked.float(),
            "reconstruction": (images * (1 - mask) + prediction * mask).float(),
        }
