"""Dataset readers: CIFAR-10 (pickle batches or image folders), Fashion-MNIST (IDX), class folders.

Every dataset yields ``(image, label)`` with ``image`` a ``uint8`` tensor of
shape ``(3, H, W)``. Colour rule: a single-channel (grayscale) image is
expanded to RGB by copying its channel into all three, which is what PIL's
``convert("RGB")`` does for mode ``L``; palette, CMYK and RGBA images go
through ``convert("RGB")`` too (alpha is dropped).

Readers for CIFAR-10 pickles and IDX files are written here rather than taken
from ``torchvision.datasets`` because torchvision verifies the MD5 of the
official archives (refusing smaller batches in the same format, as tests and
subsets use) and wants the IDX files un-gzipped next to the originals, which
a read-only data folder cannot offer.
"""

from __future__ import annotations

import gzip
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch.utils.data import Dataset

from selfsup import safe_pickle
from selfsup.errors import DataError
from selfsup.safe_pickle import CodeInPickle

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageDataset(Dataset):
    """Base class: ``(uint8 (3, H, W) tensor, int label)`` items and a class list."""

    classes: Sequence[str]

    @property
    def labels(self) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError


class ArrayDataset(ImageDataset):
    """Images held in memory as a ``uint8`` array (``N, H, W`` or ``N, H, W, 3``)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> None:
        # Read-only arrays (np.frombuffer) would make torch warn on every item.
        images = images if images.flags.writeable else images.copy()
        if images.dtype != np.uint8:
            raise DataError(f"images must be uint8, got {images.dtype}")
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self._labels = labels.astype(np.int64)
        self.classes = classes

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[index])
        image = image.unsqueeze(0).expand(3, -1, -1) if image.ndim == 2 else image.permute(2, 0, 1)
        return image, int(self._labels[index])


class FolderDataset(ImageDataset):
    """Image files listed as ``(path, label)``; decoded on access."""

    def __init__(self, samples: list[tuple[str, int]], classes: Sequence[str]) -> None:
        self.samples = samples
        self.classes = classes

    @property
    def labels(self) -> np.ndarray:
        return np.fromiter((label for _, label in self.samples), dtype=np.int64, count=len(self))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return read_image(path), label


class SubsetDataset(ImageDataset):
    """A fixed selection of another dataset's items."""

    def __init__(self, base: ImageDataset, indices: np.ndarray) -> None:
        self.base = base
        self.indices = indices
        self.classes = base.classes

    @property
    def labels(self) -> np.ndarray:
        return self.base.labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.base[int(self.indices[index])]


def unwrap_subset(dataset: ImageDataset) -> tuple[ImageDataset, np.ndarray | None]:
    """The dataset a subset selects from and its indices; a whole dataset and None otherwise."""
    if isinstance(dataset, SubsetDataset):
        return dataset.base, dataset.indices
    return dataset, None


def subset_indices(size: int, count: int | None, seed: int = 0) -> np.ndarray | None:
    """Sorted indices of a seeded random subset of ``count`` items; None for all items.

    Random rather than the first ``count`` items, because class folders are
    stored class by class and a prefix would hold only the first classes.
    """
    if count is None or count >= size:
        return None
    if count <= 0:
        raise DataError(f"subset size must be positive, got {count}")
    return np.sort(np.random.default_rng(seed).permutation(size)[:count])


def take_subset(dataset: ImageDataset, count: int | None, seed: int = 0) -> ImageDataset:
    """A seeded random subset of ``count`` items (see :func:`subset_indices`)."""
    indices = subset_indices(len(dataset), count, seed)
    return dataset if indices is None else SubsetDataset(dataset, indices)


# The most pixels an image may have, whoever decodes it: PIL's own limit (89.5 M,
# a 9459 x 9459 image), far above any training image.
MAX_IMAGE_PIXELS = 89_478_485


def read_image(path: str | Path | BinaryIO, name: str | None = None) -> torch.Tensor:
    """Decode an image file to a ``uint8 (3, H, W)`` RGB tensor, or raise :class:`DataError`.

    ``path`` may be an open binary file (encoded bytes); ``name`` says in an
    error which image it is.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Above MAX_IMAGE_PIXELS PIL only warns (up to twice that): refuse it outright.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"))
    except Exception as exc:  # PIL raises many types for broken files
        raise DataError(
            f"cannot read image {name or path} ({type(exc).__name__}: {exc}); "
            "delete or replace the file"
        ) from exc
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


# What CIFAR-10's batches (and numpy arrays in any pickle protocol) rebuild:
# numpy arrays and dtypes, and bytes. Anything else is refused unread.
_NUMPY_PICKLE_NAMES = {"_reconstruct", "_frombuffer", "ndarray", "dtype", "scalar"}
CIFAR_PICKLE_GLOBALS = safe_pickle.allow(
    {
        "numpy.core.multiarray": _NUMPY_PICKLE_NAMES,
        "numpy._core.multiarray": _NUMPY_PICKLE_NAMES,
        "numpy.core.numeric": _NUMPY_PICKLE_NAMES,
        "numpy._core.numeric": _NUMPY_PICKLE_NAMES,
        "numpy": _NUMPY_PICKLE_NAMES,
        "_codecs": {"encode"},
    }
)


def read_cifar10_pickle(folder: Path, split: str) -> ArrayDataset:
    """Read CIFAR-10's python-pickle batches (``data_batch_1..5``, ``test_batch``)."""
    names = CIFAR10_TRAIN_BATCHES if split == "train" else CIFAR10_TEST_BATCHES
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DataError(
                f"CIFAR-10 batch {path} is missing; the folder must hold "
                f"{', '.join(CIFAR10_TRAIN_BATCHES + CIFAR10_TEST_BATCHES)}"
            )
        try:
            with path.open("rb") as fh:
                entry = safe_pickle.load(fh, CIFAR_PICKLE_GLOBALS, encoding="latin1")
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            batch_labels = np.asarray(entry.get("labels", entry.get("fine_labels")))
        except CodeInPickle as exc:
            raise DataError(
                f"refusing {path}: it carries code ({exc}); CIFAR-10 batches hold only arrays, "
                "lists and strings: download cifar-10-python.tar.gz again from its authors"
            ) from None
        except Exception as exc:
            raise DataError(
                f"{path} is not a CIFAR-10 python batch ({type(exc).__name__}: {exc}); "
                "download cifar-10-python.tar.gz again"
            ) from exc
        images.append(data.transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    return ArrayDataset(np.concatenate(images), np.concatenate(labels), CIFAR10_CLASSES)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST's format), gzipped or not, as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path} ({exc}); download it again") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise DataError(
            f"{path} is truncated: header says {shape} ({expected} bytes), "
            f"file holds {len(data) - offset}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def read_fashion_mnist(folder: Path, split: str) -> ArrayDataset:
    """Read Fashion-MNIST's four IDX files (``.gz`` or extracted) from ``folder``."""
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"))
    return ArrayDataset(images, labels, FASHION_MNIST_CLASSES)


def _idx_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"Fashion-MNIST file {folder / stem}[.gz] is missing")


def read_image_folder(folder: Path) -> FolderDataset:
    """Scan ``folder/<class>/<image>`` (ImageNet layout); classes sorted by name."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{folder} holds no class folders; expected {folder}/<class>/<image files>")
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        files = sorted(
            str(p)
            for p in (folder / name).iterdir()
            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if not files:
            raise DataError(
                f"class folder {folder / name} holds no images "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)})"
            )
        samples.extend((path, label) for path in files)
    return FolderDataset(samples, classes)
