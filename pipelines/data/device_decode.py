"""JPEG batches decoded on the training device (``data.decode=gpu``), then cut into views.

Workers only read bytes (:mod:`selfsup.pipelines.data.encoded`); the
training process decodes each batch with one batched call (nvJPEG on CUDA;
libjpeg-turbo on the CPU, the same code path the tests run), pads the images
into one tensor and cuts every view of every image with one batched op
(:mod:`selfsup.pipelines.data.crops`). The result keeps the batch contract of
:mod:`selfsup.pipelines.data.loaders`: same sampler, same order and shards as
the torchvision loader, ``uint8`` views, crops replayed bit for bit after a
resume.

Why not DALI: it is not on PyPI (NVIDIA's own index), has no CPU build to
run this code path in the tests, and would replace selfsup's sampler, so
order, sharding and exact resume would need a second implementation. nvJPEG
through TorchCodec (or torchvision) keeps one code path for both devices.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from selfsup.errors import DataError, one_line
from selfsup.pipelines.data.crops import crop_key, cut_crops, pad_to_batch, view_boxes
from selfsup.pipelines.data.encoded import EncodedBatch, EncodedItem, collate_encoded
from selfsup.pipelines.data.loaders import ResumableSampler, ViewBatch, ViewSpec, full_batches

log = logging.getLogger(__name__)

JpegDecoder = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]


def _torchvision_decoder() -> JpegDecoder:
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        with warnings.catch_warnings():  # "deprecated since 0.29 ... TorchCodec": said above
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)

    return decode


def jpeg_decoder() -> JpegDecoder:
    """Batched JPEG decoding: TorchCodec's ``decode_jpeg`` where it loads, else torchvision's.

    torchvision 0.29 deprecates its ``torchvision.io`` image decoders in
    favour of TorchCodec (``torchcodec.decoders.decode_jpeg``, batched nvJPEG
    on CUDA from 0.16). A TorchCodec built for another torch fails to load
    its library at import: torchvision's decoder is then used, the same call.
    """
    try:
        from torchcodec.decoders import decode_jpeg
    except Exception:  # ImportError, or RuntimeError/OSError from a mismatched build
        return _torchvision_decoder()

    def decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        return list(decode_jpeg(data, mode="RGB", device=device))

    return decode


def _decode_or_name_the_culprit(
    decode: JpegDecoder, items: list[EncodedItem], device: torch.device
) -> list[torch.Tensor]:
    data = [item.payload for item in items]
    try:
        return decode(data, device)
    except RuntimeError:
        for item in items:  # one by one on the CPU, to say which file is broken
            try:
                decode([item.payload], torch.device("cpu"))
            except RuntimeError as exc:
                reason = one_line(exc).rsplit(", ", 1)[-1]  # after the C++ file and line
                raise DataError(
                    f"cannot decode image {item.name} ({reason}); delete or replace the file"
                ) from exc
        raise


def decode_batch(
    decode: JpegDecoder, batch: EncodedBatch, device: torch.device
) -> list[torch.Tensor]:
    """Every image of ``batch`` as ``uint8 (3, H, W)`` on ``device``, in batch order."""
    images: list[torch.Tensor | None] = [None] * len(batch.items)
    encoded = [i for i, item in enumerate(batch.items) if item.encoded]
    if encoded:
        decoded = _decode_or_name_the_culprit(decode, [batch.items[i] for i in encoded], device)
        for i, image in zip(encoded, decoded, strict=True):
            images[i] = image
    for i, item in enumerate(batch.items):
        if not item.encoded:
            images[i] = item.payload.to(device, non_blocking=True)
    return [image for image in images if image is not None]


class DeviceDecodeTrainLoader:
    """Multi-view training batches from encoded images decoded on the training device."""

    def __init__(self, images: Dataset, spec: ViewSpec, device: torch.device) -> None:
        size = len(images)  # type: ignore[arg-type]
        self.spec, self.device = spec, device
        self.decode = jpeg_decoder()
        self.sampler = ResumableSampler(
            size, spec.world_size, spec.rank, shuffle=True, seed=spec.seed, seeded=False
        )
        self.batch_size = spec.batch_size
        self.steps_per_epoch = full_batches(self.sampler, spec, size)
        self.loader = DataLoader(
            images,
            batch_size=spec.batch_size,
            sampler=self.sampler,
            num_workers=spec.num_workers,
            collate_fn=collate_encoded,
            drop_last=True,
            persistent_workers=spec.num_workers > 0,
            generator=torch.Generator().manual_seed(spec.seed),  # see TorchvisionTrainLoader
        )

    def views(self, batch: EncodedBatch, key: int) -> list[torch.Tensor]:
        """``num_views`` uint8 crops of every image of ``batch``, on the device."""
        images = decode_batch(self.decode, batch, self.device)
        heights = np.array([int(image.shape[1]) for image in images])
        widths = np.array([int(image.shape[2]) for image in images])
        spec = self.spec
        boxes = view_boxes(key, batch.indices, heights, widths, spec.num_views, spec.crop_scale)
        crops = cut_crops(pad_to_batch(images), boxes, spec.image_size)
        return list(crops.split(len(images)))

    def epoch_batches(self, epoch: int, start_step: int = 0) -> Iterator[ViewBatch]:
        """Batches ``start_step..steps_per_epoch-1`` of ``epoch``, decoded on the device."""
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(start_step * self.batch_size)
        key = crop_key(self.spec.seed, epoch)
        fallbacks = seen = 0
        for batch in self.loader:
            fallbacks, seen = fallbacks + batch.fallbacks, seen + len(batch.items)
            yield ViewBatch(self.views(batch, key), batch.labels)
        if fallbacks:
            log.info(
                "decode: %d of %d images of epoch %d were not 8-bit RGB JPEGs and were decoded "
                "on the CPU by the loader workers",
                fallbacks,
                seen,
                epoch,
            )

    def close(self) -> None:
        """Shut the persistent workers down now (see TorchvisionTrainLoader.close)."""
        self.loader._iterator = None
