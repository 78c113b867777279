"""Config -> components: the one place that maps config sections to constructors."""

from __future__ import annotations

import logging

from torch import nn

from selfsup.errors import ConfigError
from selfsup.pipelines.augment import BatchAugment
from selfsup.pipelines.config import RunConfig
from selfsup.pipelines.data_sources import open_dataset
from selfsup.pipelines.datasets import take_subset
from selfsup.pipelines.loaders import TorchvisionTrainLoader
from selfsup.ssl.backbones import build_backbone
from selfsup.ssl.methods import build_method

log = logging.getLogger(__name__)


def build_model(config: RunConfig, distributed: bool = False) -> nn.Module:
    """Backbone + method (projection head, loss) as configured."""
    backbone = build_backbone(config.model.backbone, config.model.source, config.model.cifar_stem)
    method = config.method
    if method.name == "simclr":
        options = {
            "proj_hidden_dim": method.proj_hidden_dim,
            "proj_output_dim": method.proj_output_dim,
            "temperature": method.temperature,
            "gather_distributed": distributed,
        }
    else:  # pragma: no cover - CHOICES validation keeps this unreachable
        raise ConfigError(f"unknown method '{method.name}'")
    return build_method(method.name, backbone, **options)


def build_train_loader(
    config: RunConfig, rank: int = 0, world_size: int = 1, pin_memory: bool = False
) -> TorchvisionTrainLoader:
    data = config.data
    dataset = open_dataset(data.dataset, "train", data.path)
    dataset = take_subset(dataset, data.train_samples, seed=config.train.seed)
    low, high = config.augment.crop_scale
    return TorchvisionTrainLoader(
        dataset,
        image_size=data.image_size,
        crop_scale=(float(low), float(high)),
        num_views=config.augment.num_views,
        batch_size=data.batch_size,
        num_workers=data.num_workers,
        seed=config.train.seed,
        rank=rank,
        world_size=world_size,
        pin_memory=pin_memory,
    )


def build_augment(config: RunConfig) -> BatchAugment:
    return BatchAugment(
        config.augment,
        image_size=config.data.image_size,
        mean=list(config.data.mean),
        std=list(config.data.std),
        channels_last=config.model.channels_last,
    )
