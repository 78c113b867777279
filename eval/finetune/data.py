"""The three splits of a transfer evaluation: train, a held-out validation set, test.

Validation images are carved from the dataset's training split (seeded,
disjoint from the training images) and pick the best epoch; the test split
is scored once, with the weights chosen on validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selfsup.errors import DataError
from selfsup.pipelines.data.datasets import ImageDataset, SubsetDataset, take_subset
from selfsup.pipelines.data.sources import open_dataset


@dataclass
class Splits:
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset

    @property
    def classes(self) -> list[str]:
        return list(self.train.classes)

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)


def carve_validation(
    dataset: ImageDataset, val_fraction: float, train_samples: int | None, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """``(train, val)``: disjoint seeded subsets of ``dataset``.

    Without ``train_samples`` the split is divided ``1 - val_fraction`` to
    ``val_fraction``. With it, ``train_samples`` images train and
    ``val_fraction * train_samples`` more validate (as many as the split holds).
    """
    size = len(dataset)
    wanted = train_samples if train_samples is not None else round(size * (1 - val_fraction))
    n_val = max(1, round(val_fraction * (wanted if train_samples is not None else size)))
    n_train = min(wanted, size - n_val)
    if n_train <= 0:
        raise DataError(
            f"the training split holds {size} images, too few to hold out {n_val} for validation "
            "and keep some to train on; lower finetune.val_fraction"
        )
    order = np.random.default_rng(seed).permutation(size)
    val = np.sort(order[:n_val])
    train = np.sort(order[n_val : n_val + n_train])
    return SubsetDataset(dataset, train), SubsetDataset(dataset, val)


def load_splits(
    name: str,
    data_path: str | None,
    val_fraction: float,
    train_samples: int | None,
    test_samples: int | None,
    seed: int = 0,
) -> Splits:
    """Train/validation from the dataset's training split, test from its test split."""
    train, val = carve_validation(
        open_dataset(name, "train", data_path), val_fraction, train_samples, seed
    )
    test = take_subset(open_dataset(name, "test", data_path), test_samples, seed)
    return Splits(train=train, val=val, test=test)
