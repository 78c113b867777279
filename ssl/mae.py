"""MAE (He et al. 2021): masked autoencoding with a ViT, on lightly's modules.

The encoder sees only the visible patches (lightly's
``MaskedVisionTransformerTIMM`` around the backbone's own timm ViT); a light
decoder (lightly's ``MaskedVisionTransformerDecoderTIMM`` between a linear
embedding and a linear pixel head) rebuilds every masked patch from the
encoded visible ones and mask tokens. The loss is the mean squared error on
the masked patches, against per-patch normalised pixels by default
(``norm_pix_loss``), as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lightly.models import utils
from lightly.models.modules import MaskedVisionTransformerDecoderTIMM, MaskedVisionTransformerTIMM
from torch import nn

from selfsup.arguments import ArgumentError
from selfsup.ssl.backbones import Backbone
from selfsup.ssl.method import BuildContext, MethodConfig, check_ratio, register_method
from selfsup.ssl.outputs import StepOutput


@dataclass
class MAEConfig(MethodConfig):
    """MAE's options (the run config's ``method:`` section when ``name: mae``)."""

    name: str = "mae"
    mask_ratio: float = 0.75  # share of patches hidden
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True  # predict per-patch normalised pixels

    def check(self, context: BuildContext) -> None:
        check_ratio(self.mask_ratio, "mask_ratio")


@register_method("mae", MAEConfig, reconstructs=True, features=True, zero3=False)
class MAE(nn.Module):
    """Masked autoencoder around a ViT backbone."""

    def __init__(
        self,
        backbone: Backbone,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        check_ratio(mask_ratio, "mask_ratio")
        if not backbone.is_vit:
            raise ArgumentError(
                f"method=mae needs a ViT backbone (vit_tiny, vit_small, vit_base), not "
                f"backbone={backbone.name}; for ResNets use method=simmim",
                "method",
                "backbone",
            )
        vit: Any = backbone.trunk  # timm's VisionTransformer
        self.backbone = backbone
        # lightly's masked encoder is a view of the backbone's ViT. It is kept
        # out of the module tree (set through __dict__) so the ViT's weights
        # appear once, as backbone.trunk.*; it owns nothing MAE uses.
        # Building it also gives the ViT MAE's initialisation (fixed 2D sine-
        # cosine position embedding, xavier linear layers).
        self.__dict__["encoder"] = MaskedVisionTransformerTIMM(vit=vit)
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.patch_size = vit.patch_embed.patch_size[0]
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.sequence_length = vit.patch_embed.num_patches + vit.num_prefix_tokens
        self.decoder_embed = nn.Linear(vit.embed_dim, decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=vit.patch_embed.num_patches,
            embed_dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_heads,
            num_prefix_tokens=vit.num_prefix_tokens,
        )
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * 3)

    @classmethod
    def from_config(cls, backbone: Backbone, config: MethodConfig, context: BuildContext) -> MAE:
        assert isinstance(config, MAEConfig)
        return cls(backbone, **config.options())

    def _predict(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predicted masked patches, their targets (pixels, unnormalised), the mask indices
        and the encoder's features (the mean of its visible patch tokens)."""
        batch = images.shape[0]
        idx_keep, idx_mask = utils.random_token_mask(
            (batch, self.sequence_length), mask_ratio=self.mask_ratio, device=images.device
        )
        encoder: MaskedVisionTransformerTIMM = self.__dict__["encoder"]
        encoded = encoder.encode(images, idx_keep=idx_keep)
        tokens = utils.repeat_token(self.decoder.mask_token, (batch, self.sequence_length))
        tokens = utils.set_at_index(tokens, idx_keep, self.decoder_embed(encoded).type_as(tokens))
        decoded = self.decoder.decode(self.decoder.add_pos_embed(tokens))
        prediction = self.decoder_pred(utils.get_at_index(decoded, idx_mask))
        patches = utils.patchify(images, self.patch_size)
        target = utils.get_at_index(patches, idx_mask - self.num_prefix_tokens)
        features = encoded[:, self.num_prefix_tokens :].mean(dim=1)
        return prediction, target, idx_mask - self.num_prefix_tokens, features

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        prediction, target, _, features = self._predict(torch.cat(views))
        target = target.float()
        if self.norm_pix_loss:
            target = utils.normalize_mean_var(target, dim=-1)
        loss = F.mse_loss(prediction.float(), target)
        metrics = {"loss/reconstruction": loss.detach()}
        return StepOutput(loss=loss, metrics=metrics, features=features.detach())

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Masked input and reconstruction, in the input's (normalised) pixel space."""
        prediction, target, patch_index, _ = self._predict(images)
        prediction = prediction.float()
        if self.norm_pix_loss:  # back to pixels with each masked patch's own statistics
            mean = target.float().mean(dim=-1, keepdim=True)
            std = (target.float().var(dim=-1, keepdim=True) + 1e-6).sqrt()
            prediction = prediction * std + mean
        patches = utils.patchify(images, self.patch_size).float()
        masked = utils.set_at_index(patches, patch_index, torch.zeros_like(prediction))
        rebuilt = utils.set_at_index(patches.clone(), patch_index, prediction)
        return {
            "masked": utils.unpatchify(masked, self.patch_size),
            "reconstruction": utils.unpatchify(rebuilt, self.patch_size),
        }
