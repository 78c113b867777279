"""The FFCV loader: multi-view crops decoded straight from a ``.beton`` file.

It keeps the batch contract of :mod:`selfsup.pipelines.data.loaders`:
``num_views`` ``uint8`` random-resized crops per image (one
``RandomResizedCropRGBImageDecoder`` per view over the same stored ``image``
field: ffcv 1.0.2 decodes a field twice through a second ``PipelineSpec``),
moved to the GPU by ffcv when there is one, then augmented and normalised on
the device by :class:`selfsup.pipelines.data.augment.BatchAugment`.

Sample order is selfsup's own (:class:`~selfsup.pipelines.data.loaders.ResumableSampler`
for ``random``), so both loaders visit the same samples in the same order
for a given seed and epoch, shard them the same way across ranks, and resume
mid-epoch at the exact sample. The crop parameters are drawn by ffcv's
compiled decoder from its own random state: unlike the torchvision loader's
they are not replayed bit for bit after a resume.

ffcv hands out views of buffers it reuses for later batches; every tensor
yielded here is a copy, safe to keep.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from selfsup.errors import ConfigError
from selfsup.pipelines.config.registry import register_choices
from selfsup.pipelines.data.beton import IMAGE_FIELD, LABEL_FIELD, open_beton, require_ffcv
from selfsup.pipelines.data.datasets import subset_indices
from selfsup.pipelines.data.loaders import ResumableSampler, ViewBatch, ViewSpec

log = logging.getLogger(__name__)

ORDERS = ("random", "quasi_random")
CROP_RATIO = (3 / 4, 4 / 3)


def _make_loader_class():
    """ffcv's Loader with selfsup's sample order (built lazily: ffcv is optional)."""
    from ffcv.loader import Loader

    class PositionedLoader(Loader):
        """Starts an epoch at any batch and, for random order, uses selfsup's sampler."""

        def __init__(
            self, *args, sampler: ResumableSampler | None, subset: np.ndarray | None, **kwargs
        ):
            self.sampler = sampler
            self.subset = subset
            self.start_batch = 0
            super().__init__(*args, **kwargs)

        def next_traversal_order(self):
            if self.sampler is not None:
                self.sampler.set_epoch(self.next_epoch)
                self.sampler.set_start(self.start_batch * self.batch_size)
                positions = np.fromiter((i for i, _ in self.sampler), dtype=np.int64)
                order = positions if self.subset is None else self.subset[positions]
                return order.astype(np.uint64)
            order = super().next_traversal_order()
            usable = len(order) // self.batch_size * self.batch_size
            return order[self.start_batch * self.batch_size : usable]

    return PositionedLoader


def _image_transforms(device: torch.device) -> list:
    from ffcv.transforms import ToDevice, ToTensor, ToTorchImage

    ops = [ToTensor()]
    if device.type == "cuda":
        ops.append(ToDevice(device, non_blocking=True))
    # channels_last=True: a zero-copy NHWC -> NCHW view (channels-last memory)
    ops.append(ToTorchImage(channels_last=True))
    return ops


def _label_transforms(device: torch.device) -> list:
    from ffcv.fields.decoders import IntDecoder
    from ffcv.transforms import Squeeze, ToDevice, ToTensor

    ops = [IntDecoder(), ToTensor(), Squeeze()]
    if device.type == "cuda":
        ops.append(ToDevice(device, non_blocking=True))
    return ops


def _order_option(order: str):
    from ffcv.loader import OrderOption

    if order not in ORDERS:
        raise ConfigError(f"unknown ffcv order '{order}'; use one of {', '.join(ORDERS)}")
    return OrderOption.RANDOM if order == "random" else OrderOption.QUASI_RANDOM


class FFCVTrainLoader:
    """Multi-view training batches from a ``.beton`` through ffcv."""

    def __init__(
        self,
        beton: str | Path,
        spec: ViewSpec,
        device: torch.device | None = None,
        order: str = "random",
        os_cache: bool = True,
        batches_ahead: int = 3,
        train_samples: int | None = None,
    ) -> None:
        require_ffcv()
        image_size, crop_scale, num_views = spec.image_size, spec.crop_scale, spec.num_views
        batch_size, seed, rank, world_size = spec.batch_size, spec.seed, spec.rank, spec.world_size
        from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
        from ffcv.pipeline import PipelineSpec

        if order == "quasi_random" and world_size > 1:
            raise ConfigError(
                "data.ffcv_order=quasi_random does not support distributed training "
                f"({world_size} processes; ffcv raises NotImplementedError): use random"
            )
        device = device or torch.device("cpu")
        reader = open_beton(beton)
        subset = subset_indices(int(reader.num_samples), train_samples, seed)
        size = int(reader.num_samples) if subset is None else len(subset)
        sampler = None
        if order == "random":
            sampler = ResumableSampler(size, world_size, rank, shuffle=True, seed=seed)
        elif subset is not None:
            raise ConfigError("data.train_samples works with data.ffcv_order=random only")

        def view_decoder():
            return RandomResizedCropRGBImageDecoder(
                (image_size, image_size), scale=crop_scale, ratio=CROP_RATIO
            )

        pipelines: dict = {
            IMAGE_FIELD: [view_decoder(), *_image_transforms(device)],
            LABEL_FIELD: _label_transforms(device),
        }
        self.view_names = [IMAGE_FIELD]
        for view in range(1, num_views):
            name = f"{IMAGE_FIELD}_{view}"
            pipelines[name] = PipelineSpec(
                IMAGE_FIELD, decoder=view_decoder(), transforms=_image_transforms(device)
            )
            self.view_names.append(name)
        self.loader = _make_loader_class()(
            str(beton),
            batch_size=batch_size,
            num_workers=max(1, spec.num_workers),
            order=_order_option(order),
            os_cache=os_cache,
            drop_last=True,
            pipelines=pipelines,
            batches_ahead=batches_ahead,
            seed=seed,
            sampler=sampler,
            subset=subset,
        )
        self.batch_size = batch_size
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{beton} has {size} images, fewer than one batch of {batch_size} per process "
                f"on {world_size} process(es); lower data.batch_size"
            )

    def epoch_batches(self, epoch: int, start_step: int = 0) -> Iterator[ViewBatch]:
        """Batches ``start_step..steps_per_epoch-1`` of ``epoch`` (copies, safe to keep)."""
        self.loader.next_epoch = epoch
        self.loader.start_batch = start_step
        try:
            for outputs in self.loader:
                # ffcv returns the file's fields first, then the extra views.
                image, labels, *others = outputs
                views = [image, *others]
                yield ViewBatch([v.clone() for v in views], labels.reshape(-1).long().clone())
        finally:
            self.loader.start_batch = 0

    def close(self) -> None:
        """ffcv's epoch iterator, closed with the trainer's step generator, owns the threads."""


def ffcv_eval_loader(
    beton: str | Path,
    image_size: int,
    batch_size: int,
    num_workers: int,
    device: torch.device | None = None,
    os_cache: bool = True,
    indices: np.ndarray | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation batches ``(uint8 images, labels)`` in file order: centre crop, like the
    torchvision path (central square, resized to ``image_size``)."""
    require_ffcv()
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    device = device or torch.device("cpu")
    open_beton(beton)
    loader = Loader(
        str(beton),
        batch_size=batch_size,
        num_workers=max(1, num_workers),
        order=OrderOption.SEQUENTIAL,
        os_cache=os_cache,
        drop_last=False,
        indices=indices,
        pipelines={
            IMAGE_FIELD: [
                CenterCropRGBImageDecoder((image_size, image_size), ratio=1.0),
                *_image_transforms(device),
            ],
            LABEL_FIELD: _label_transforms(device),
        },
    )
    for images, labels in loader:
        yield images.clone(), labels.reshape(-1).long().cpu()


register_choices("data.ffcv_order", lambda: ORDERS)
