"""Finding datasets on disk (or downloading them) and opening them by name.

Where the data comes from, in order:

1. an explicit path (``data.path`` / ``--data``): the dataset folder itself or
   a root that holds it; nothing else is searched;
2. the folders in ``$SELFSUP_DATA`` (``:``-separated);
3. ``../shared/data`` beside the working directory, then beside the checkout;
4. selfsup's download cache, ``$XDG_CACHE_HOME/selfsup/data`` (``~/.cache``);
5. torchvision's download into that cache (CIFAR-10, Fashion-MNIST), unless
   ``SELFSUP_OFFLINE=1``;
6. otherwise a :class:`DataError` naming every place looked at and what to
   put there.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from selfsup.errors import ConfigError, DataError
from selfsup.paths import checkout_root
from selfsup.pipelines.config.registry import register_choices
from selfsup.pipelines.data.datasets import (
    IMAGE_EXTENSIONS,
    ImageDataset,
    read_cifar10_pickle,
    read_fashion_mnist,
    read_image_folder,
)
from selfsup.registry import Registry, UnknownName

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class DatasetInfo:
    """How to recognise and read one dataset."""

    name: str
    title: str
    num_classes: int | None  # None: read from the class folders
    folder_names: tuple[str, ...]  # names the dataset folder may have under a data root
    layout_hint: str  # the expected layout, for error messages
    downloadable: bool


def _has_cifar_pickles(folder: Path) -> bool:
    return (folder / "data_batch_1").is_file() and (folder / "test_batch").is_file()


def _has_idx(folder: Path) -> bool:
    return any((folder / f"train-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz"))


def _split_folder(folder: Path, split: str) -> Path | None:
    """The class-folder tree for ``split``; the eval split is ``val`` or ``test``."""
    names = ("train",) if split == "train" else ("val", "test")
    for name in names:
        candidate = folder / name
        if candidate.is_dir() and any(p.is_dir() for p in candidate.iterdir()):
            return candidate
    return None


def _has_class_folders(folder: Path) -> bool:
    return _split_folder(folder, "train") is not None and _split_folder(folder, "test") is not None


SPLIT_NAMES = ("train", "val", "test")


def _is_class_tree(folder: Path) -> bool:
    """``folder/<class>/<image>`` itself (torchvision's ImageFolder; ``imagenet/train``)."""
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes or any(d.name in SPLIT_NAMES for d in classes):
        return False
    # Images right inside the class folders (a few sampled): not a root of datasets.
    return all(any(f.suffix.lower() in IMAGE_EXTENSIONS for f in d.iterdir()) for d in classes[:3])


def _image_layout(folder: Path) -> str | None:
    """Which class-folder layout ``folder`` has: both splits, ``train/`` alone, or one tree."""
    if _has_class_folders(folder):
        return "imagefolder"
    if _split_folder(folder, "train") is not None:
        return "imagefolder-train"  # train/ without val/ or test/: pretraining only
    if _is_class_tree(folder):
        return "class-tree"  # one split: read for whichever split is asked for
    return None


CIFAR10 = DatasetInfo(
    name="cifar10",
    title="CIFAR-10",
    num_classes=10,
    folder_names=("cifar-10-batches-py", "cifar10-jpeg", "cifar10"),
    layout_hint=(
        "cifar-10-batches-py/ (data_batch_1..5, test_batch) or an image-folder tree "
        "train/<class>/*.jpg + test/<class>/*.jpg"
    ),
    downloadable=True,
)
FASHION_MNIST = DatasetInfo(
    name="fashion_mnist",
    title="Fashion-MNIST",
    num_classes=10,
    folder_names=("FashionMNIST/raw", "raw", "fashion_mnist", "fashion-mnist"),
    layout_hint="FashionMNIST/raw/ with train-images-idx3-ubyte.gz and the 3 other IDX files",
    downloadable=True,
)
IMAGENETTE = DatasetInfo(
    name="imagenette",
    title="Imagenette",
    num_classes=None,
    folder_names=("imagenette", "imagenette2", "imagenette2-320"),
    layout_hint="ImageNet-style class folders train/<wnid>/*.JPEG + val/<wnid>/*.JPEG",
    downloadable=False,
)
IMAGEFOLDER = DatasetInfo(
    name="imagefolder",
    title="image folder",
    num_classes=None,
    folder_names=(),
    layout_hint=(
        "class folders train/<class>/<images> + val/<class>/<images> (or test/), train/ alone "
        "(pretraining), or one split's tree <class>/<images> itself"
    ),
    downloadable=False,
)
DATASETS: Registry[DatasetInfo] = Registry("dataset")
for _info in (CIFAR10, FASHION_MNIST, IMAGENETTE, IMAGEFOLDER):
    DATASETS.register(_info.name, _info)


@dataclass(frozen=True)
class LocatedDataset:
    info: DatasetInfo
    folder: Path
    format: str  # cifar10-pickle | idx | imagefolder


def _detect_format(info: DatasetInfo, folder: Path) -> str | None:
    if not folder.is_dir():
        return None
    if info is CIFAR10 and _has_cifar_pickles(folder):
        return "cifar10-pickle"
    if info is FASHION_MNIST and _has_idx(folder):
        return "idx"
    if info is not FASHION_MNIST:
        return _image_layout(folder)
    return None


def _search_in_root(info: DatasetInfo, root: Path) -> LocatedDataset | None:
    for folder in (root, *(root / name for name in info.folder_names)):
        fmt = _detect_format(info, folder)
        if fmt is not None:
            return LocatedDataset(info, folder, fmt)
    return None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "selfsup" / "data"


def default_roots() -> list[Path]:
    """Data roots searched when no path is given, in order."""
    roots = [Path(p) for p in os.environ.get("SELFSUP_DATA", "").split(os.pathsep) if p]
    roots += [Path.cwd().parent / "shared" / "data", checkout_root().parent / "shared" / "data"]
    roots.append(cache_dir())
    unique: list[Path] = []
    for root in roots:
        if root.resolve() not in (u.resolve() for u in unique):
            unique.append(root)
    return unique


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS.get(name)
    except UnknownName as exc:
        raise ConfigError(str(exc)) from None


def locate_dataset(name: str, path: str | Path | None = None) -> LocatedDataset:
    """Find dataset ``name`` following the search order in this module's docstring."""
    info = dataset_info(name)
    if path is not None:
        folder = Path(path).expanduser()
        if not folder.exists():
            raise DataError(f"dataset folder {folder} does not exist (set data.path or --data)")
        found = _search_in_root(info, folder)
        if found is None:
            raise DataError(
                f"{folder} does not look like {info.title}: expected {info.layout_hint}"
            )
        return found
    if info is IMAGEFOLDER:
        raise DataError("dataset 'imagefolder' needs a path: set data.path=/path/to/images")
    roots = default_roots()
    for root in roots:
        found = _search_in_root(info, root)
        if found is not None:
            return found
    if info.downloadable:
        downloaded = _download(info, cache_dir())
        if downloaded is not None:
            return downloaded
    looked = ", ".join(str(r) for r in roots)
    raise DataError(
        f"{info.title} not found (looked in {looked}); put {info.layout_hint} under one of "
        f"them, or pass its folder with --data / data.path"
    )


def detect_dataset(path: str | Path) -> str:
    """The dataset name whose layout ``path`` has (class folders count as ``imagefolder``)."""
    folder = Path(path)
    if not folder.exists():
        raise DataError(f"dataset folder {folder} does not exist")
    if _detect_format(CIFAR10, folder) == "cifar10-pickle":
        return CIFAR10.name
    if _detect_format(FASHION_MNIST, folder) or _detect_format(FASHION_MNIST, folder / "raw"):
        return FASHION_MNIST.name
    if _detect_format(IMAGEFOLDER, folder) and not _search_in_root(FASHION_MNIST, folder):
        return IMAGEFOLDER.name
    found = [i.name for i in (CIFAR10, FASHION_MNIST, IMAGENETTE) if _search_in_root(i, folder)]
    if found:
        raise DataError(
            f"{folder} holds several datasets ({', '.join(found)}); pass --dataset NAME "
            "or the dataset's own folder"
        )
    layouts = "; ".join(
        f"{i.title}: {i.layout_hint}" for i in (CIFAR10, FASHION_MNIST, IMAGEFOLDER)
    )
    raise DataError(f"cannot tell which dataset {folder} holds; expected one of: {layouts}")


def open_dataset(name: str, split: str, path: str | Path | None = None) -> ImageDataset:
    """Open the ``train`` or ``test`` split of dataset ``name``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    located = locate_dataset(name, path)
    readers: dict[str, Callable[[Path, str], ImageDataset]] = {
        "cifar10-pickle": read_cifar10_pickle,
        "idx": read_fashion_mnist,
        "imagefolder": _read_folder_split,
        "imagefolder-train": _read_folder_split,
        "class-tree": lambda folder, split: read_image_folder(folder),
    }
    dataset = readers[located.format](located.folder, split)
    log.debug("opened %s %s split from %s (%d images)", name, split, located.folder, len(dataset))
    return dataset


def _read_folder_split(folder: Path, split: str) -> ImageDataset:
    split_folder = _split_folder(folder, split)
    if split_folder is None:
        raise DataError(
            f"{folder} has no {split} split (it holds train/ alone); add val/<class>/ or "
            f"test/<class>/, or point at a class-folder tree of that split itself"
        )
    return read_image_folder(split_folder)


def _download(info: DatasetInfo, root: Path) -> LocatedDataset | None:
    """Fetch a dataset with torchvision; None (and a log line) when offline."""
    if os.environ.get("SELFSUP_OFFLINE", "") not in ("", "0"):
        return None
    import torchvision

    factory = {
        "cifar10": torchvision.datasets.CIFAR10,
        "fashion_mnist": torchvision.datasets.FashionMNIST,
    }
    log.info("%s not found locally; downloading it into %s", info.title, root)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        factory[info.name](str(root), train=True, download=True)
        factory[info.name](str(root), train=False, download=True)
    except Exception as exc:  # network errors come in many types
        log.warning("could not download %s: %s", info.title, exc)
        return None
    finally:
        socket.setdefaulttimeout(previous)
    return _search_in_root(info, root)


register_choices("data.dataset", DATASETS.names)
