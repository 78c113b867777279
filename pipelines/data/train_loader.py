"""The training loader a run config asks for: the loader registry, the choice, construction.

``data.loader`` (and ``probe.loader``) name an entry of :data:`LOADERS`, or
``auto``: FFCV where it is installed and a ``.beton`` is given, else
torchvision (said in one log line).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from selfsup.errors import ConfigError
from selfsup.pipelines.data.beton import ffcv_available, require_ffcv
from selfsup.pipelines.data.datasets import take_subset
from selfsup.pipelines.data.loaders import TorchvisionTrainLoader, TrainLoader, ViewSpec
from selfsup.pipelines.data.sources import open_dataset
from selfsup.pipelines.runtime.cpus import loader_workers
from selfsup.registry import Registry

if TYPE_CHECKING:  # config.py reads LOADERS; at run time this module needs no config
    from selfsup.pipelines.config import RunConfig

log = logging.getLogger(__name__)

# (config, the batch contract, device) -> loader
LoaderBuilder = Callable[["RunConfig", ViewSpec, torch.device], TrainLoader]
LOADERS: Registry[LoaderBuilder] = Registry("loader")


@LOADERS.decorator("torchvision")
def _torchvision(config: RunConfig, spec: ViewSpec, device: torch.device) -> TrainLoader:
    data = config.data
    dataset = open_dataset(data.dataset, "train", data.path)
    dataset = take_subset(dataset, data.train_samples, seed=config.train.seed)
    return TorchvisionTrainLoader(dataset, spec, pin_memory=device.type == "cuda")


@LOADERS.decorator("ffcv")
def _ffcv(config: RunConfig, spec: ViewSpec, device: torch.device) -> TrainLoader:
    from selfsup.pipelines.data.ffcv_loader import FFCVTrainLoader

    data = config.data
    assert data.beton is not None
    return FFCVTrainLoader(
        data.beton,
        spec,
        device=device,
        order=data.ffcv_order,
        os_cache=data.os_cache,
        batches_ahead=data.batches_ahead,
        train_samples=data.train_samples,
    )


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
    spec = ViewSpec(
        image_size=data.image_size,
        crop_scale=(float(low), float(high)),
        num_views=config.augment.num_views,
        batch_size=data.batch_size,
        num_workers=loader_workers(data.num_workers),
        seed=config.train.seed,
        rank=rank,
        world_size=world_size,
    )
    return LOADERS.get(choose_loader(data.loader, data.beton))(config, spec, device)
