"""The device-resident loader (``data.loader=memory``): the whole dataset as one tensor.

For datasets that fit in the training device's memory (CIFAR-10: 150 MB,
Fashion-MNIST: 140 MB, Imagenette at 160 px: 730 MB) the images are decoded
once into a single ``uint8 (N, 3, S, S)`` tensor on the device. A batch is
an index gather and one batched crop op (:mod:`selfsup.pipelines.data.crops`);
no worker processes, no host-to-device copies. It keeps the batch contract
of :mod:`selfsup.pipelines.data.loaders`: the same sampler (so the same
samples in the same order as the torchvision loader for a seed and epoch,
and the same shards across ranks), ``uint8`` views, and crops that are a
pure function of ``(seed, epoch, index, view)``, replayed bit for bit after a
resume.

Images of different sizes (class folders) are stored as ``S x S`` squares:
shorter side resized to ``S``, centre crop (``data.memory_side``, default
``data.image_size``), the reduced-resolution copy FFCV's ``max_resolution``
also makes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from selfsup.errors import ConfigError
from selfsup.pipelines.data.crops import crop_key, cut_crops, view_boxes
from selfsup.pipelines.data.datasets import ArrayDataset, ImageDataset, unwrap_subset
from selfsup.pipelines.data.loaders import (
    ResizeCenterCrop,
    ResumableSampler,
    ViewBatch,
    ViewSpec,
    full_batches,
)

log = logging.getLogger(__name__)

MAX_MEMORY_SHARE = 0.5  # of the device's free memory: the model needs the rest


def _as_array_images(dataset: ImageDataset) -> np.ndarray | None:
    """The ``uint8`` array behind an in-memory dataset (or a subset of one), else None."""
    dataset, indices = unwrap_subset(dataset)
    if not isinstance(dataset, ArrayDataset):
        return None
    images = dataset.images if indices is None else dataset.images[indices]
    return images[..., None].repeat(3, -1) if images.ndim == 3 else images


def stored_side(dataset: ImageDataset, requested: int | None, image_size: int) -> int:
    """The side images are held at: ``requested``, an array's own square side, or ``image_size``."""
    if requested is not None:
        return requested
    images = _as_array_images(dataset)
    if images is not None and images.shape[1] == images.shape[2]:
        return int(images.shape[1])
    return image_size


def free_bytes(device: torch.device) -> int:
    """Memory free on ``device`` (host: the kernel's MemAvailable, page cache counted free)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _check_fits(count: int, side: int, device: torch.device) -> None:
    need = count * 3 * side * side
    free = free_bytes(device)
    if need > MAX_MEMORY_SHARE * free:
        raise ConfigError(
            f"data.loader=memory: {count:,} images of 3x{side}x{side} need "
            f"{need / 2**30:.1f} GiB, more than half of the {free / 2**30:.1f} GiB free on "
            f"{device}; lower data.memory_side or use data.loader=ffcv"
        )


def load_images(
    dataset: ImageDataset, side: int, num_workers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image as ``uint8 (N, 3, side, side)`` and the labels, on the CPU."""
    labels = torch.from_numpy(np.asarray(dataset.labels, dtype=np.int64))
    images = _as_array_images(dataset)
    if images is not None and images.shape[1:3] == (side, side):
        return torch.from_numpy(np.ascontiguousarray(images)).permute(
            0, 3, 1, 2
        ).contiguous(), labels
    stored = torch.empty((len(dataset), 3, side, side), dtype=torch.uint8)
    batches = DataLoader(
        ResizeCenterCrop(dataset, side), batch_size=256, num_workers=num_workers, shuffle=False
    )
    position = 0
    for batch, _ in batches:
        stored[position : position + len(batch)] = batch
        position += len(batch)
    return stored, labels


class MemoryTrainLoader:
    """Multi-view training batches cut from a dataset held on the training device."""

    def __init__(
        self, dataset: ImageDataset, spec: ViewSpec, device: torch.device, side: int | None = None
    ) -> None:
        if spec.crop != "resized" or spec.randaugment:
            raise ConfigError(
                "data.loader=memory cuts random-resized crops only; use the torchvision "
                "loader for padded crops or RandAugment"
            )
        side = stored_side(dataset, side, spec.image_size)
        _check_fits(len(dataset), side, device)
        started = time.perf_counter()
        images, labels = load_images(dataset, side, spec.num_workers)
        self.images, self.labels = images.to(device), labels.to(device)
        log.info(
            "memory loader: %s images of 3x%dx%d on %s (%.2f GiB), loaded in %.1f s",
            f"{len(dataset):,}",
            side,
            side,
            device,
            images.numel() / 2**30,
            time.perf_counter() - started,
        )
        self.spec = spec
        self.side = side
        self.sampler = ResumableSampler(
            len(dataset), spec.world_size, spec.rank, shuffle=True, seed=spec.seed
        )
        self.batch_size = spec.batch_size
        self.steps_per_epoch = full_batches(self.sampler, spec, len(dataset))

    def epoch_batches(self, epoch: int, start_step: int = 0) -> Iterator[ViewBatch]:
        """Batches ``start_step..steps_per_epoch-1`` of ``epoch``, already on the device."""
        size, views, batch = self.spec.image_size, self.spec.num_views, self.batch_size
        order = self.sampler.epoch_indices(epoch, start_step * batch)
        key = crop_key(self.spec.seed, epoch)
        sides = np.full(batch, self.side)
        for step in range(self.steps_per_epoch - start_step):
            chosen = order[step * batch : (step + 1) * batch]
            index = torch.from_numpy(chosen).to(self.images.device, non_blocking=True)
            boxes = view_boxes(key, chosen, sides, sides, views, self.spec.crop_scale)
            crops = cut_crops(self.images[index], boxes, size)
            yield ViewBatch(list(crops.split(batch)), self.labels[index])

    def close(self) -> None:
        """Nothing runs in the background."""
