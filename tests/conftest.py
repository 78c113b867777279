"""Shared fixtures: tiny datasets in the real on-disk formats, and the real data when present."""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import struct
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers.cluster import slurm_nodes_up

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
CIFAR10_JPEG = SHARED_DATA / "cifar10-jpeg"
FASHION_MNIST_RAW = SHARED_DATA / "FashionMNIST" / "raw"
IMAGENETTE = SHARED_DATA / "imagenette"


LOAD_GUARD = Path(__file__).resolve().parent / "helpers" / "loadguard"


def pytest_configure(config: pytest.Config) -> None:
    # Nothing may be downloaded during tests, and tests must not pick up a
    # user's data through the default search path by accident.
    os.environ["SELFSUP_OFFLINE"] = "1"
    install_load_guard()


def install_load_guard() -> None:
    """No unpickling of file contents outside selfsup's reader, here and in every child process.

    ``helpers/loadguard/sitecustomize.py`` records each one in a log that
    fails the session (:func:`pytest_sessionfinish`).
    """
    log = Path(tempfile.mkdtemp(prefix="selfsup-load-guard-")) / "unsafe-loads.log"
    log.touch()
    os.environ["SELFSUP_UNSAFE_LOAD_LOG"] = str(log)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(LOAD_GUARD), os.environ.get("PYTHONPATH")) if p
    )
    spec = importlib.util.spec_from_file_location(
        "selfsup_load_guard", LOAD_GUARD / "sitecustomize.py"
    )
    assert spec is not None and spec.loader is not None
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)  # installs itself (the log variable is set)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    log = Path(os.environ.get("SELFSUP_UNSAFE_LOAD_LOG", "/nonexistent"))
    found = log.read_text() if log.is_file() else ""
    if found:
        print(f"\nunsafe loads during the tests (the suite fails):\n{found}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def slurm_skips(required: str) -> dict[str, str]:
    """Skip reasons for the SLURM markers; SELFSUP_REQUIRE_SLURM=1 (a cluster) or 2 (two
    nodes) fails instead."""
    nodes, skips = slurm_nodes_up(), {}
    if required in ("1", "2") and nodes < int(required):
        raise pytest.UsageError(
            f"SELFSUP_REQUIRE_SLURM={required}, but {nodes} node(s) of the dev cluster answer"
        )
    if nodes == 0:
        skips["slurm"] = (
            "no SLURM cluster answers (slurm/dev-cluster.sh start; export SLURM_CONF=...)"
        )
    if nodes < 2:
        skips["two_nodes"] = "no two-node SLURM cluster (slurm/dev-cluster.sh start --nodes 2)"
    return skips


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip cleanly what this machine cannot run.

    ``shared_data`` tests need ../shared/data; ``ffcv`` tests need ffcv, and CI
    (SELFSUP_REQUIRE_FFCV=1) fails rather than skips them.
    """
    skips = {}
    if not (CIFAR10_JPEG.is_dir() and FASHION_MNIST_RAW.is_dir()):
        skips["shared_data"] = f"real datasets not found in {SHARED_DATA}"
    if importlib.util.find_spec("ffcv") is None:
        if os.environ.get("SELFSUP_REQUIRE_FFCV") == "1":
            raise pytest.UsageError("SELFSUP_REQUIRE_FFCV=1 but ffcv is not installed")
        skips["ffcv"] = "ffcv is not installed (scripts/install-ffcv.sh)"
    skips.update(slurm_skips(os.environ.get("SELFSUP_REQUIRE_SLURM", "0")))
    for item in items:
        for marker, reason in skips.items():
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


def class_images(
    num_per_class: int, num_classes: int, size: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is visible (a coloured square on noise), as uint8 NHWC."""
    rng = np.random.default_rng(seed)
    n = num_per_class * num_classes
    images = rng.integers(0, 80, size=(n, size, size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(num_classes), num_per_class)
    for i, label in enumerate(labels):
        colour = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53 + 128) % 256])
        top, left = rng.integers(0, size // 2, size=2)
        images[i, top : top + size // 2, left : left + size // 2] = colour
    order = rng.permutation(n)
    return images[order], labels[order]


def write_cifar10_pickles(folder: Path, per_batch: int = 40, seed: int = 0) -> Path:
    """CIFAR-10's python format: 5 training batches + test_batch + batches.meta."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        images, labels = class_images(per_batch // 10, 10, 32, seed=seed + k)
        entry = {
            "batch_label": name,
            "labels": labels.tolist(),
            "data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
            "filenames": [f"{name}_{i}.png" for i in range(len(images))],
        }
        with (folder / name).open("wb") as fh:
            pickle.dump(entry, fh)
    with (folder / "batches.meta").open("wb") as fh:
        pickle.dump({"label_names": ["airplane"] * 10}, fh)
    return folder


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_fashion_mnist(
    folder: Path, train: int = 60, test: int = 30, compress: bool = True
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        images, labels = class_images(count // 10, 10, 28, seed=1 if prefix == "train" else 2)
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte", images.mean(axis=3).astype(np.uint8), compress
        )
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return folder


def write_image_folder(
    root: Path, per_class: int = 4, classes: int = 3, size: int = 40, splits=("train", "val")
) -> Path:
    """ImageNet-style class folders of real JPEG files (one grayscale image per class)."""
    from PIL import Image

    for s, split in enumerate(splits):
        images, labels = class_images(per_class, classes, size, seed=10 + s)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / f"n{label:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            picture = Image.fromarray(image)
            if i < classes:
                picture = picture.convert("L")  # grayscale files must come out as 3 channels
            picture.save(folder / f"{i:04d}.JPEG", quality=90)
    return root


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding tiny CIFAR-10 (pickle), Fashion-MNIST (IDX) and an image folder."""
    root = tmp_path_factory.mktemp("data")
    write_cifar10_pickles(root / "cifar-10-batches-py")
    write_fashion_mnist(root / "FashionMNIST" / "raw")
    write_image_folder(root / "imagenette")
    return root


@pytest.fixture
def tiny_overrides(data_root: Path, tmp_path: Path) -> list[str]:
    """Config overrides for a seconds-long CPU run on the tiny CIFAR-10."""
    return [
        f"output_dir={tmp_path / 'runs'}",
        "name=tiny",
        f"data.path={data_root / 'cifar-10-batches-py'}",
        "data.batch_size=16",
        "data.num_workers=0",
        "model.channels_last=false",
        "method.proj_hidden_dim=64",
        "method.proj_output_dim=32",
        "train.max_steps=6",
        "train.log_every=2",
        "checkpoint.every_steps=3",
        "optim.warmup_epochs=0.5",
        f"probe.data_path={data_root}",
        "probe.epochs=5",
        "probe.knn_k=5",
        "probe.num_workers=0",
        "probe.batch_size=64",
        "monitor.enabled=false",  # on in the recipes; tests that watch a run turn it on
    ]


@pytest.fixture(scope="session")
def datagen() -> SimpleNamespace:
    """The writers above, for tests that need data of their own shape."""
    return SimpleNamespace(
        class_images=class_images,
        write_cifar10_pickles=write_cifar10_pickles,
        write_idx=write_idx,
        write_fashion_mnist=write_fashion_mnist,
        write_image_folder=write_image_folder,
    )


@pytest.fixture(scope="session")
def shared_data() -> SimpleNamespace:
    """Paths of the real datasets; tests using them are marked ``shared_data``."""
    return SimpleNamespace(
        root=SHARED_DATA,
        cifar10_jpeg=CIFAR10_JPEG,
        fashion_mnist_raw=FASHION_MNIST_RAW,
        imagenette=IMAGENETTE,
    )
