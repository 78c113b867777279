"""Config -> components: the one place that maps config sections to constructors."""

from __future__ import annotations

import logging

import torch
from torch import nn

from selfsup.errors import ConfigError
from selfsup.pipelines.augment import BatchAugment
from selfsup.pipelines.beton import ffcv_available, require_ffcv
from selfsup.pipelines.config import RunConfig
from selfsup.pipelines.data_sources import open_dataset
from selfsup.pipelines.datasets import take_subset
from selfsup.pipelines.loaders import TorchvisionTrainLoader, TrainLoader
from selfsup.ssl.backbones import build_backbone
from selfsup.ssl.methods import build_method

log = logging.getLogger(__name__)


def build_backbone_for(config: RunConfig):
    """The configured backbone, randomly initialised."""
    model = config.model
    return build_backbone(
        model.backbone,
        source=model.source,
        cifar_stem=model.cifar_stem,
        image_size=config.data.image_size,
        patch_size=model.patch_size,
        pool=model.pool,
    )


def build_model(config: RunConfig, distributed: bool = False) -> nn.Module:
    """Backbone + method (heads, decoder, loss) as configured."""
    backbone = build_backbone_for(config)
    method = config.method
    if method.name == "simclr":
        options = {
            "proj_hidden_dim": method.proj_hidden_dim,
            "proj_output_dim": method.proj_output_dim,
            "temperature": method.temperature,
            "gather_distributed": distributed,
        }
    elif method.name == "mae":
        options = {
            "decoder_dim": method.decoder_dim,
            "decoder_depth": method.decoder_depth,
            "decoder_heads": method.decoder_heads,
            "norm_pix_loss": method.norm_pix_loss,
        }
    elif method.name == "simmim":
        options = {
            "image_size": config.data.image_size,
            "mask_patch_size": method.mask_patch_size,
        }
    else:  # pragma: no cover - CHOICES validation keeps this unreachable
        raise ConfigError(f"unknown method '{method.name}'")
    if method.mask_ratio is not None:  # unset: each method's own default (MAE 0.75, SimMIM 0.6)
        options["mask_ratio"] = method.mask_ratio
    return build_method(method.name, backbone, **options)


def choose_loader(
    requested: str,
    beton: str | None,
    loader_key: str = "data.loader",
    beton_key: str = "data.beton",
) -> str:
    """``torchvision`` or ``ffcv`` for a loader setting (``auto`` falls back with a log line)."""
    if requested == "torchvision":
        return "torchvision"
    if requested == "ffcv":
        require_ffcv()
        if not beton:
            raise ConfigError(
                f"{loader_key}=ffcv needs a .beton file: write one with "
                f"`selfsup data write SOURCE OUT.beton` and set {beton_key}=OUT.beton"
            )
        return "ffcv"
    if not ffcv_available():
        log.info("%s=auto: ffcv is not installed, using the torchvision loader", loader_key)
        return "torchvision"
    if not beton:
        log.info("%s=auto: %s is not set, using the torchvision loader", loader_key, beton_key)
        return "torchvision"
    return "ffcv"


def build_train_loader(
    config: RunConfig,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
) -> TrainLoader:
    """The configured loader, sharded for ``rank`` of ``world_size`` processes."""
    data = config.data
    device = device or torch.device("cpu")
    low, high = config.augment.crop_scale
    common = {
        "image_size": data.image_size,
        "crop_scale": (float(low), float(high)),
        "num_views": config.augment.num_views,
        "batch_size": data.batch_size,
        "num_workers": data.num_workers,
        "seed": config.train.seed,
        "rank": rank,
        "world_size": world_size,
    }
    if choose_loader(data.loader, data.beton) == "ffcv":
        from selfsup.pipelines.ffcv_loader import FFCVTrainLoader

        assert data.beton is not None
        return FFCVTrainLoader(
            data.beton,
            device=device,
            order=data.ffcv_order,
            os_cache=data.os_cache,
            batches_ahead=data.batches_ahead,
            train_samples=data.train_samples,
            **common,
        )
    dataset = open_dataset(data.dataset, "train", data.path)
    dataset = take_subset(dataset, data.train_samples, seed=config.train.seed)
    return TorchvisionTrainLoader(dataset, pin_memory=device.type == "cuda", **common)


def build_augment(config: RunConfig) -> BatchAugment:
    return BatchAugment(
        config.augment,
        image_size=config.data.image_size,
        mean=list(config.data.mean),
        std=list(config.data.std),
        channels_last=config.model.channels_last,
    )
