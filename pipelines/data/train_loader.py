"""The training loader a run config asks for: the loader registry, the choice, construction.

``data.loader`` names an entry of :data:`LOADERS` (``torchvision``, ``ffcv``,
``memory``), or ``auto``: FFCV where it is installed and a ``.beton`` is
given, else torchvision (said in one log line). ``probe.loader`` chooses
between the first two the same way.

``data.decode`` says where JPEGs are decoded for the ``torchvision`` and
``ffcv`` loaders: ``cpu`` in the loader workers, ``gpu`` in the training
process on its device, batched (:mod:`selfsup.pipelines.data.device_decode`);
``auto`` picks ``gpu`` on CUDA when the images are JPEGs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from selfsup.errors import ConfigError
from selfsup.pipelines.config import AUTO, RunConfig, register_choices
from selfsup.pipelines.data.beton import ffcv_available, require_ffcv
from selfsup.pipelines.data.datasets import ImageDataset, subset_indices, take_subset
from selfsup.pipelines.data.device_decode import DeviceDecodeTrainLoader
from selfsup.pipelines.data.encoded import EncodedBeton, encoded_files
from selfsup.pipelines.data.loaders import TorchvisionTrainLoader, TrainLoader, ViewSpec
from selfsup.pipelines.data.memory_loader import MemoryTrainLoader
from selfsup.pipelines.data.sources import open_dataset
from selfsup.pipelines.runtime.cpus import loader_workers
from selfsup.registry import Registry

log = logging.getLogger(__name__)

# (config, the batch contract, device) -> loader
LoaderBuilder = Callable[["RunConfig", ViewSpec, torch.device], TrainLoader]
LOADERS: Registry[LoaderBuilder] = Registry("loader")
DECODES = ("auto", "cpu", "gpu")
# Loaders of the frozen-feature evaluation (probe.loader): images in order, no views.
PROBE_LOADERS = ("torchvision", "ffcv")
JPEG_SUFFIXES = (".jpg", ".jpeg")


def choose_decode(requested: str, device: torch.device, jpeg: bool, images: str) -> str:
    """``cpu`` or ``gpu`` for ``data.decode`` (``images`` names the data in messages)."""
    if requested == "cpu":
        return "cpu"
    if requested == "gpu":
        if not jpeg:
            raise ConfigError(
                f"data.decode=gpu needs JPEG images; {images} are not: use data.decode=cpu "
                "(or data.loader=memory for a dataset that fits in memory)"
            )
        if device.type != "cuda":
            log.info("data.decode=gpu on %s: batches are decoded in the training process", device)
        return "gpu"
    if device.type == "cuda" and jpeg:
        log.info("data.decode=auto: JPEG batches are decoded on %s", device)
        return "gpu"
    return "cpu"


def _training_images(config: RunConfig) -> ImageDataset:
    data = config.data
    dataset = open_dataset(data.dataset, "train", data.path)
    return take_subset(dataset, data.train_samples, seed=config.train.seed)


@LOADERS.decorator("torchvision")
def _torchvision(config: RunConfig, spec: ViewSpec, device: torch.device) -> TrainLoader:
    dataset = _training_images(config)
    files = encoded_files(dataset)
    jpeg = files is not None and files.samples[0][0].lower().endswith(JPEG_SUFFIXES)
    what = f"the {config.data.dataset} training images"
    if choose_decode(config.data.decode, device, jpeg, what) == "gpu":
        assert files is not None  # jpeg
        return DeviceDecodeTrainLoader(files, spec, device)
    return TorchvisionTrainLoader(dataset, spec, pin_memory=device.type == "cuda")


@LOADERS.decorator("memory")
def _memory(config: RunConfig, spec: ViewSpec, device: torch.device) -> TrainLoader:
    return MemoryTrainLoader(_training_images(config), spec, device, config.data.memory_side)


def _beton_decoded_on_device(
    config: RunConfig, spec: ViewSpec, device: torch.device
) -> TrainLoader | None:
    data = config.data
    assert data.beton is not None
    if data.decode == "cpu" or (data.decode == "auto" and data.ffcv_order != "random"):
        return None  # quasi_random is ffcv's own order: ffcv decodes
    if data.ffcv_order != "random":
        raise ConfigError(
            "data.decode=gpu reads the .beton in selfsup's order: set data.ffcv_order=random"
        )
    images = EncodedBeton(data.beton)
    jpeg = images.jpeg_share() >= 0.5
    what = f"{data.beton}'s images (written in raw mode)"
    if choose_decode(data.decode, device, jpeg, what) == "cpu":
        return None
    images.positions = subset_indices(len(images), data.train_samples, config.train.seed)
    return DeviceDecodeTrainLoader(images, spec, device)


@LOADERS.decorator("ffcv")
def _ffcv(config: RunConfig, spec: ViewSpec, device: torch.device) -> TrainLoader:
    from selfsup.pipelines.data.ffcv_loader import FFCVTrainLoader

    data = config.data
    on_device = _beton_decoded_on_device(config, spec, device)
    if on_device is not None:
        return on_device
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
    """The loader for a setting: any registered name as it is (checked by the config), or
    ``auto``: ``ffcv`` or ``torchvision``, said in a log line."""
    if requested == "ffcv":
        require_ffcv()
        if not beton:
            raise ConfigError(
                f"{loader_key}=ffcv needs a .beton file: write one with "
                f"`selfsup data write SOURCE OUT.beton` and set {beton_key}=OUT.beton"
            )
    if requested != "auto":
        return requested
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


register_choices("data.loader", lambda: (*LOADERS.names(), AUTO))
register_choices("data.decode", lambda: DECODES)
register_choices("probe.loader", lambda: (*PROBE_LOADERS, AUTO))
