"""The torchvision loader: multi-view crops of a dataset, resumable mid-epoch.

The batch contract every loader (this one, FFCV, the device-resident memory
loader, and any registered in ``train_loader.LOADERS``) keeps:

- training batches are :class:`ViewBatch` es: ``num_views`` tensors of
  ``uint8`` crops ``(B, 3, S, S)`` (random-resized crops, one per view) and
  the labels; colour, flip and blur augmentations and normalisation run on the
  device afterwards (:mod:`selfsup.pipelines.data.augment`);
- evaluation batches are ``(uint8 images (B, 3, S, S), labels)``: shorter side
  resized to ``S``, centre crop;
- ``steps_per_epoch`` full batches per epoch (the last partial batch is
  dropped), ``epoch_batches(epoch, start_step)`` yields an epoch from any step.

Randomness is a pure function of ``(seed, epoch, sample index)``: the sampler
hands each index its own seed and the crops are drawn from it. An epoch
therefore yields the same batches whatever the number of workers and whether
or not the run was interrupted and resumed part-way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2

from selfsup.errors import DataError
from selfsup.pipelines.data.datasets import ImageDataset
from selfsup.pipelines.runtime.seeding import derive_seed

SampleKey = tuple[int, int]  # (dataset index, seed for that sample's randomness)


@dataclass
class ViewBatch:
    views: list[torch.Tensor]  # num_views x uint8 (B, 3, S, S)
    labels: torch.Tensor  # int64 (B,)


class TrainLoader(Protocol):
    """What the trainer needs from a loader (torchvision and FFCV provide it)."""

    batch_size: int
    steps_per_epoch: int

    def epoch_batches(self, epoch: int, start_step: int = 0) -> Iterator[ViewBatch]: ...

    def close(self) -> None:
        """Stop background workers now (the run is over)."""


def global_positions(rank: int, world_size: int, micro_batch: int, size: int) -> torch.Tensor:
    """Where the rows of a rank's micro-batch sit in its optimizer step's global batch.

    Every loader hands rank ``r`` of ``W`` the samples ``r, r + W, r + 2W, ...``
    of the epoch's shuffled order (``DistributedSampler``'s split), ``size``
    per micro-batch: row ``j`` of micro-batch ``k`` is position
    ``r + W * (k * size + j)`` of the step, the same sample whatever the
    number of ranks or the split into micro-batches (for the same global batch).
    """
    rows = micro_batch * size + torch.arange(size)
    return rank + world_size * rows


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, sample)."""
    return derive_seed(seed, epoch, index)


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that yields ``(index, sample seed)`` and can start mid-epoch.

    With ``num_replicas`` and ``rank`` given explicitly it needs no process
    group, so the single-process and distributed paths are the same code.
    ``seeded=False`` yields ``(index, 0)``: for loaders that draw their crops
    per batch (a sample seed costs ~10 us, 13 s an ImageNet epoch).
    """

    def __init__(
        self,
        dataset_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        seeded: bool = True,
    ) -> None:
        super().__init__(
            _Sized(dataset_size),  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=True,
        )
        self.start_index = 0
        self.seeded = seeded

    def set_start(self, start_index: int) -> None:
        """Skip the first ``start_index`` samples of this rank's share of the epoch."""
        self.start_index = start_index

    def __iter__(self) -> Iterator[SampleKey]:
        indices = list(super().__iter__())[self.start_index :]
        if not self.seeded:
            return iter([(index, 0) for index in indices])
        return iter([(index, sample_seed(self.seed, self.epoch, index)) for index in indices])

    def epoch_indices(self, epoch: int, start_index: int = 0) -> np.ndarray:
        """This rank's dataset indices of ``epoch`` from ``start_index`` on (no sample seeds)."""
        self.set_epoch(epoch)
        return np.asarray(list(super().__iter__())[start_index:], dtype=np.int64)

    def __len__(self) -> int:
        return self.num_samples - self.start_index


def full_batches(sampler: ResumableSampler, spec: ViewSpec, size: int) -> int:
    """Full batches per epoch of this rank's share; :class:`DataError` when there is none."""
    steps = sampler.num_samples // spec.batch_size
    if steps == 0:
        raise DataError(
            f"the dataset has {size} images, fewer than one batch of {spec.batch_size} "
            f"per process on {spec.world_size} process(es); lower data.batch_size"
        )
    return steps


class _Sized:
    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def crop_transform(spec: ViewSpec) -> v2.Transform:
    """``resized``: random-resized crop (SSL, ImageNet-style); ``pad``: the CIFAR crop.

    With ``randaugment`` torchvision's RandAugment (2 ops at that magnitude)
    follows the crop; it draws from the same per-sample seed.

    ``pad`` resizes the shorter side to ``image_size`` (Fashion-MNIST's 28 px
    to 32), centre-crops, pads ``padding`` zero pixels on every side and takes
    a random ``image_size`` crop, the standard supervised CIFAR augmentation.
    """
    size = spec.image_size
    if spec.crop == "pad":
        steps: list[v2.Transform] = [
            v2.Resize(size, antialias=True),
            v2.CenterCrop(size),
            v2.RandomCrop(size, padding=spec.padding),
        ]
    else:
        steps = [v2.RandomResizedCrop(size, scale=spec.crop_scale, antialias=True)]
    if spec.randaugment:  # per image, seeded with the crop (supervised fine-tuning)
        steps.append(v2.RandAugment(num_ops=2, magnitude=spec.randaugment))
    return steps[0] if len(steps) == 1 else v2.Compose(steps)


class MultiViewCrops(Dataset):
    """``num_views`` independent random crops of each image, seeded per sample."""

    def __init__(self, base: ImageDataset, spec: ViewSpec) -> None:
        self.base = base
        self.num_views = spec.num_views
        self.crop = crop_transform(spec)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: SampleKey) -> tuple[list[torch.Tensor], int]:
        index, seed = key
        image, label = self.base[index]
        # fork_rng: the worker (or, with num_workers=0, the trainer) keeps its own RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            views = [self.crop(image) for _ in range(self.num_views)]
        return views, label


class ResizeCenterCrop(Dataset):
    """Deterministic evaluation view: shorter side to ``image_size``, centre crop."""

    def __init__(self, base: ImageDataset, image_size: int) -> None:
        self.base = base
        self.transform = v2.Compose(
            [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
        )
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        if image.shape[-2:] != (self.image_size, self.image_size):
            image = self.transform(image)
        return image, label


def _collate_views(items: list[tuple[list[torch.Tensor], int]]) -> ViewBatch:
    num_views = len(items[0][0])
    views = [torch.stack([views[v] for views, _ in items]) for v in range(num_views)]
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    return ViewBatch(views, labels)


@dataclass(frozen=True)
class ViewSpec:
    """The batch contract every training loader keeps.

    ``num_views`` random-resized crops of ``image_size`` per image (area share
    in ``crop_scale``), ``batch_size`` images per process, sharded across
    ``world_size`` processes and reshuffled per epoch from ``seed``.
    """

    image_size: int
    crop_scale: tuple[float, float]
    num_views: int
    batch_size: int
    num_workers: int
    seed: int
    rank: int = 0
    world_size: int = 1
    crop: str = "resized"  # resized | pad (see crop_transform)
    padding: int = 4  # crop=pad
    randaugment: int = 0  # RandAugment magnitude after the crop (2 ops); 0: off


class TorchvisionTrainLoader:
    """Multi-view training batches through ``torch.utils.data.DataLoader``."""

    def __init__(self, dataset: ImageDataset, spec: ViewSpec, pin_memory: bool = False) -> None:
        batch_size, world_size, seed = spec.batch_size, spec.world_size, spec.seed
        self.sampler = ResumableSampler(
            len(dataset), world_size, spec.rank, shuffle=True, seed=seed
        )
        self.batch_size = batch_size
        self.steps_per_epoch = full_batches(self.sampler, spec, len(dataset))
        self.loader = DataLoader(
            MultiViewCrops(dataset, spec),
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=spec.num_workers,
            collate_fn=_collate_views,
            drop_last=True,
            pin_memory=pin_memory,
            persistent_workers=spec.num_workers > 0,
            # Its own generator: creating an epoch's iterator draws a worker
            # base seed, which must not advance the trainer's global RNG (that
            # would make a resumed run's RNG state differ from an unbroken one).
            generator=torch.Generator().manual_seed(seed),
        )

    def epoch_batches(self, epoch: int, start_step: int = 0) -> Iterator[ViewBatch]:
        """Batches ``start_step..steps_per_epoch-1`` of ``epoch``."""
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(start_step * self.batch_size)
        yield from self.loader

    def close(self) -> None:
        """Shut the persistent workers down now.

        DataLoader has no public way to; dropping its iterator (which holds the
        workers) shuts them down in this process. Left to the garbage collector,
        a later DataLoader's forked workers inherit the iterator and each prints
        "can only test a child process" when it collects it (a fine-tune's
        second phase did).
        """
        self.loader._iterator = None


def eval_loader(
    dataset: ImageDataset, image_size: int, batch_size: int, num_workers: int
) -> DataLoader:
    """Evaluation batches ``(uint8 images, labels)`` in dataset order."""
    return DataLoader(
        ResizeCenterCrop(dataset, image_size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        drop_last=False,
    )
