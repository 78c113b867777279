"""Config -> model and augmentation: the one place that maps config sections to constructors.

Errors from ``ssl`` name its own arguments; building through
:func:`~selfsup.pipelines.config.config_keys_in_errors` renames them to the
config keys a user sets.
"""

from __future__ import annotations

from torch import nn

from selfsup.pipelines.config import RunConfig, config_keys_in_errors
from selfsup.pipelines.data.augment import BatchAugment
from selfsup.pipelines.data.train_loader import build_train_loader
from selfsup.pipelines.train.teacher import load_teacher
from selfsup.ssl.backbones import Backbone, build_backbone
from selfsup.ssl.method import BuildContext
from selfsup.ssl.methods import build_method

__all__ = ["build_augment", "build_backbone_for", "build_model", "build_train_loader"]


def build_backbone_for(config: RunConfig) -> Backbone:
    """The configured backbone, randomly initialised."""
    model = config.model
    with config_keys_in_errors():
        return build_backbone(
            model.backbone,
            source=model.source,
            cifar_stem=model.cifar_stem,
            image_size=config.data.image_size,
            patch_size=model.patch_size,
            pool=model.pool,
        )


def build_model(config: RunConfig, distributed: bool = False) -> nn.Module:
    """Backbone + method (heads, decoder, loss) as configured; a distillation's teacher loaded."""
    backbone = build_backbone_for(config)
    context = BuildContext(
        image_size=config.data.image_size,
        num_views=config.augment.num_views,
        distributed=distributed,
        teacher=load_teacher(config),
    )
    with config_keys_in_errors(config.method):
        return build_method(backbone, config.method, context)


def build_augment(config: RunConfig) -> BatchAugment:
    return BatchAugment(
        config.augment,
        image_size=config.data.image_size,
        mean=list(config.data.mean),
        std=list(config.data.std),
        channels_last=config.model.channels_last,
    )
