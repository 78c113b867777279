"""I-JEPA (Assran et al. 2023): predict masked regions' representations, not their pixels.

A context encoder (the backbone's timm ViT, seen through lightly's
``MaskedVisionTransformerTIMM``) encodes one large context block of each
image; a narrow ViT predictor (lightly's ``IJEPAPredictorTIMM``) predicts,
from the context tokens and the positions of four target blocks, what a
momentum target encoder (:class:`~selfsup.ssl.momentum.MomentumEncoder`, a
moving average of the context encoder) makes of the whole image at those
positions, layer-normalised. Loss: smooth L1 (or L2) between the two. The
masks are the reference collator's rules (:mod:`selfsup.ssl.ijepa_masks`),
drawn from (seed, step, sample position) counters so they replay exactly.

As in the paper, evaluation reads the *target* encoder's average-pooled
features: the method registers ``evaluates="target.encoder."``, so the run's
``backbone.pt``, ``selfsup probe`` and ``selfsup finetune`` take the target
unless ``checkpoint export --which student`` is asked for.

Deliberate differences from facebookresearch/ijepa (``docs/methods.md``): the
ViT is timm's with ``global_pool="avg"``: its class token stays in every
sequence (context and target) and is dropped before the predictor and the
loss; the encoder's final norm is timm's ``fc_norm``, applied to each token
in training, to the pooled token in evaluation (the reference pools normed
tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from lightly.models import utils
from lightly.models.modules import IJEPAPredictorTIMM, MaskedVisionTransformerTIMM
from torch import nn

from selfsup.arguments import ArgumentError
from selfsup.registry import Registry
from selfsup.ssl.backbones import Backbone
from selfsup.ssl.ijepa_masks import MultiBlock, batch_masks
from selfsup.ssl.method import BuildContext, KeyedViews, MethodConfig, register_method
from selfsup.ssl.momentum import MomentumEncoder, check_momentum
from selfsup.ssl.outputs import StepOutput

LOSSES: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = Registry("I-JEPA loss")
LOSSES.register("smooth_l1", F.smooth_l1_loss)  # the reference's
LOSSES.register("l2", F.mse_loss)

PREVIEW_SEED = 0  # TensorBoard's mask panels: the same masks at every logging step


@dataclass
class IJEPAConfig(MethodConfig):
    """I-JEPA's options (the run config's ``method:`` section when ``name: ijepa``)."""

    name: str = "ijepa"
    pred_depth: int = 6  # predictor blocks (the reference: 12 for ViT-H, 6 in its small configs)
    pred_emb_dim: int = 384  # predictor width (narrower than the encoder)
    targets: int = 4  # target blocks per image
    target_scale: list[float] = field(default_factory=lambda: [0.15, 0.2])
    target_aspect: list[float] = field(default_factory=lambda: [0.75, 1.5])
    context_scale: list[float] = field(default_factory=lambda: [0.85, 1.0])
    min_keep: int = 10  # a context keeps more patches than this
    momentum_start: float = 0.996  # target encoder's EMA momentum, linear to momentum_end
    momentum_end: float = 1.0
    loss: str = "smooth_l1"  # smooth_l1 | l2

    def check(self, context: BuildContext) -> None:
        check_momentum(self.momentum_start, self.momentum_end)
        LOSSES.get(self.loss)
        for argument in ("target_scale", "target_aspect", "context_scale"):
            low, high = _range(getattr(self, argument), argument)
            if low <= 0 or (argument != "target_aspect" and high > 1):
                raise ArgumentError(
                    f"{argument} must lie within (0, 1], got {[low, high]}", argument
                )
        for argument in ("pred_depth", "pred_emb_dim", "targets"):
            if getattr(self, argument) < 1:
                raise ArgumentError(f"{argument} must be at least 1", argument)


def _range(value: Any, argument: str) -> tuple[float, float]:
    if len(value) != 2 or value[0] > value[1]:
        raise ArgumentError(
            f"{argument} must be [low, high] with low <= high, got {value}", argument
        )
    return float(value[0]), float(value[1])


@register_method(
    "ijepa", IJEPAConfig, reconstructs=True, features=True, momentum=True, keyed=True,
    evaluates="target.encoder.", zero3=False,
)  # fmt: skip
class IJEPA(nn.Module):
    """Context encoder (the backbone), momentum target encoder and predictor."""

    panel_group = "masks"  # TensorBoard: masks/{original,context,targets}

    def __init__(self, backbone: Backbone, config: IJEPAConfig) -> None:
        super().__init__()
        vit: Any = _checked_vit(backbone)
        self.backbone = backbone
        # lightly's masked encoder is a view of the backbone's ViT, kept out of the
        # module tree (its weights appear once, as backbone.trunk.*). Building it gives
        # the ViT the fixed 2D sine-cosine position embedding the reference uses.
        self.__dict__["encoder"] = MaskedVisionTransformerTIMM(vit=vit)
        # The target starts as an exact copy, initialisation included (the reference).
        self.target = MomentumEncoder(backbone, config.momentum_start, config.momentum_end)
        self.__dict__["target_view"] = MaskedVisionTransformerTIMM(
            vit=self.target.encoder.trunk,
            weight_initialization="skip",
            pos_embed_initialization="skip",
        )
        heads = vit.blocks[0].attn.num_heads  # the reference: the encoder's head count
        if config.pred_emb_dim % heads:
            raise ArgumentError(
                f"pred_emb_dim={config.pred_emb_dim} must be a multiple of the encoder's "
                f"{heads} attention heads",
                "pred_emb_dim",
            )
        self.predictor = IJEPAPredictorTIMM(
            num_patches=vit.patch_embed.num_patches,
            depth=config.pred_depth,
            mlp_dim=vit.embed_dim,
            predictor_embed_dim=config.pred_emb_dim,
            num_heads=heads,
        )
        self.prefix = vit.num_prefix_tokens
        height, width = vit.patch_embed.grid_size
        self.grid = MultiBlock(
            height, width, config.targets, _range(config.target_scale, "target_scale"),
            _range(config.target_aspect, "target_aspect"),
            _range(config.context_scale, "context_scale"), config.min_keep,
        )  # fmt: skip
        self.loss_fn = LOSSES.get(config.loss)
        self.patch_size = vit.patch_embed.patch_size[0]

    @classmethod
    def from_config(cls, backbone: Backbone, config: MethodConfig, context: BuildContext) -> IJEPA:
        assert isinstance(config, IJEPAConfig)
        return cls(backbone, config)

    def _tokens(self, view: MaskedVisionTransformerTIMM, images: torch.Tensor, keep: Any) -> Any:
        """Kept patch tokens (prefix tokens dropped), each normed by the ViT's final norm."""
        tokens = view.encode(images, idx_keep=keep)[:, self.prefix :]
        return view.vit.fc_norm(tokens)

    def _with_prefix(self, patches: torch.Tensor) -> torch.Tensor:
        """Patch indices to sequence indices, the prefix (class) tokens first."""
        prefix = torch.arange(self.prefix, device=patches.device).expand(len(patches), -1)
        return torch.cat([prefix, patches + self.prefix], dim=1)

    def predict(
        self, images: torch.Tensor, context: torch.Tensor, targets: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predictions and targets ``(targets * B, K_t, D)``, and the target encoder's
        features of the whole images, pooled as its evaluation pools them (timm: the mean
        token, then ``fc_norm``): what the online classifier learns from."""
        view = self.__dict__["target_view"]
        with torch.no_grad():
            raw = view.encode(images)[:, self.prefix :]
            pooled = view.vit.fc_norm(raw.mean(dim=1))
            wanted = view.vit.fc_norm(raw)
            wanted = F.layer_norm(wanted.float(), wanted.shape[-1:])
            wanted = utils.apply_masks(wanted, targets)
        encoded = self._tokens(self.__dict__["encoder"], images, self._with_prefix(context))
        predicted = self.predictor(encoded, context, targets)
        return predicted, wanted, pooled

    def forward(self, batch: KeyedViews) -> StepOutput:
        images = batch.views[0]
        context, targets = batch_masks(self.grid, batch.seed, batch.step, batch.positions)
        context = context.to(images.device, non_blocking=True)
        targets = [t.to(images.device, non_blocking=True) for t in targets]
        predicted, wanted, features = self.predict(images, context, targets)
        loss = self.loss_fn(predicted.float(), wanted)
        metrics = {"loss/prediction": loss.detach()}
        return StepOutput(loss=loss, metrics=metrics, features=features.detach())

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The masks over ``images``: the context block's patches, and the target blocks'."""
        positions = torch.arange(len(images))
        context, targets = batch_masks(self.grid, PREVIEW_SEED, 0, positions)
        patches = utils.patchify(images, self.patch_size).float()
        shown = {"context": context, "targets": torch.cat(targets, dim=1)}
        return {name: self._only(patches, index) for name, index in shown.items()}

    def _only(self, patches: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The image with the patches at ``index`` kept and the others at the mean colour."""
        keep = torch.zeros(patches.shape[:2], dtype=torch.bool, device=patches.device)
        keep.scatter_(1, index.to(patches.device), True)
        return utils.unpatchify(patches * keep.unsqueeze(-1), self.patch_size)


def _checked_vit(backbone: Backbone) -> nn.Module:
    """The backbone's timm ViT, average-pooled (the features I-JEPA is evaluated on)."""
    if not backbone.is_vit:
        raise ArgumentError(
            f"method=ijepa needs a ViT backbone (vit_tiny, vit_small, vit_base), not "
            f"backbone={backbone.name}",
            "method",
            "backbone",
        )
    vit: Any = backbone.trunk
    if vit.global_pool != "avg":
        raise ArgumentError(
            "method=ijepa is evaluated on the average of its patch tokens, as in the paper: set "
            f"pool=avg, not pool={vit.global_pool}",
            "method",
            "pool",
        )
    return vit
