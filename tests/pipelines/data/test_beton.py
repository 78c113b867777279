"""Writing and reading .beton files through the real ffcv."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from selfsup.errors import DataError
from selfsup.pipelines.data.beton import WriteOptions, open_beton, verify_beton, write_beton
from selfsup.pipelines.data.datasets import ArrayDataset, read_image_folder

pytestmark = pytest.mark.ffcv


def smooth_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Photo-like (smooth) images: JPEG's error on them is small, as on real photos."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    images = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        images[i, ..., 0] = 255 * (0.5 + 0.5 * np.sin(6 * a * x + 3 * b * y))
        images[i, ..., 1] = 255 * (a * x + (1 - a) * y)
        images[i, ..., 2] = 255 * (0.5 + 0.5 * np.cos(5 * c * y))
    return images


def read_all(beton, size):
    from selfsup.pipelines.data.ffcv_loader import ffcv_eval_loader

    batches = list(ffcv_eval_loader(beton, size, batch_size=16, num_workers=1))
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return 10 * np.log10(255**2 / mse)


def test_raw_mode_round_trip_is_pixel_exact(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(40) % 7
    summary = write_beton(
        ArrayDataset(images, labels, [str(i) for i in range(7)]),
        tmp_path / "raw.beton",
        WriteOptions(mode="raw", workers=2),
    )
    assert summary.samples == 40 and summary.class_counts == np.bincount(labels).tolist()
    out, out_labels = read_all(tmp_path / "raw.beton", 32)
    assert torch.equal(out, torch.from_numpy(images).permute(0, 3, 1, 2))
    assert torch.equal(out_labels, torch.from_numpy(labels))


def test_jpg_mode_labels_exact_images_close(tmp_path):
    images = smooth_images(30)
    labels = np.arange(30) % 3
    write_beton(
        ArrayDataset(images, labels, ["a", "b", "c"]),
        tmp_path / "jpg.beton",
        WriteOptions(mode="jpg", jpeg_quality=90, workers=2),
    )
    out, out_labels = read_all(tmp_path / "jpg.beton", 32)
    assert torch.equal(out_labels, torch.from_numpy(labels))
    assert psnr(out, torch.from_numpy(images).permute(0, 3, 1, 2)) > 30
    assert verify_beton(tmp_path / "jpg.beton").image_modes == {"jpg": 30}


def test_proportion_mode_and_max_resolution(tmp_path):
    images = smooth_images(60, size=48)
    write_beton(
        ArrayDataset(images, np.zeros(60), ["x"]),
        tmp_path / "p.beton",
        WriteOptions(mode="proportion", compress_probability=0.5, max_resolution=24, workers=2),
    )
    modes = verify_beton(tmp_path / "p.beton").image_modes
    assert set(modes) == {"jpg", "raw"} and sum(modes.values()) == 60
    from selfsup.pipelines.data.beton import IMAGE_FIELD, field_metadata

    meta = field_metadata(open_beton(tmp_path / "p.beton"), IMAGE_FIELD)
    assert meta["width"].max() == 24 and meta["height"].max() == 24


@pytest.mark.parametrize(
    "options, message",
    [
        (WriteOptions(mode="jpeg"), "unknown write mode 'jpeg' \\(ffcv calls JPEG mode 'jpg'\\)"),
        (WriteOptions(jpeg_quality=0), "jpeg quality"),
        (WriteOptions(mode="proportion", compress_probability=2), "compress probability"),
    ],
)
def test_bad_options_are_refused_before_any_work(tmp_path, options, message):
    dataset = ArrayDataset(smooth_images(4), np.zeros(4), ["x"])
    with pytest.raises(DataError, match=message):
        write_beton(dataset, tmp_path / "x.beton", options)
    assert not list(tmp_path.iterdir())


def test_broken_image_in_a_worker_fails_fast_with_its_path(tmp_path, datagen):
    root = datagen.write_image_folder(tmp_path / "imgs", per_class=60, classes=2, splits=("train",))
    broken = sorted((root / "train").rglob("*.JPEG"))[90]
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really")
    dataset = read_image_folder(root / "train")
    out = tmp_path / "out" / "imgs.beton"
    with pytest.raises(
        DataError, match=f"writing .*failed: sample \\d+: cannot read image .*{broken.name}"
    ):
        write_beton(dataset, out, WriteOptions(workers=2, chunk_size=10))
    assert not out.exists() and not list(out.parent.glob(".*tmp"))


def test_a_worker_killed_by_a_signal_does_not_hang_the_writer(tmp_path):
    # ffcv waits forever for a dead worker; the watchdog must end the wait.
    script = f"""
import os, signal, numpy as np
from pathlib import Path
from selfsup.pipelines.data.beton import WriteOptions, write_beton
from selfsup.pipelines.data.datasets import ArrayDataset

class Crashing(ArrayDataset):
    def __getitem__(self, index):
        if index == 150 and os.getpid() != PARENT:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitem__(index)

PARENT = os.getpid()
data = Crashing(np.zeros((300, 8, 8, 3), np.uint8), np.zeros(300), ["x"])
try:
    write_beton(data, Path({str(tmp_path / "k.beton")!r}), WriteOptions(workers=2, chunk_size=10))
except Exception as exc:
    print("ERROR:", exc)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert "ERROR: writing" in result.stdout and "a writer process crashed" in result.stdout, result
    assert not (tmp_path / "k.beton").exists()


def test_truncated_and_foreign_files_are_named(tmp_path):
    write_beton(
        ArrayDataset(smooth_images(20), np.zeros(20), ["x"]),
        tmp_path / "ok.beton",
        WriteOptions(workers=1),
    )
    data = (tmp_path / "ok.beton").read_bytes()
    (tmp_path / "cut.beton").write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="cut.beton is not a readable .beton file"):
        open_beton(tmp_path / "cut.beton")
    (tmp_path / "text.beton").write_text("hello")
    with pytest.raises(DataError, match="text.beton is not a readable .beton file"):
        open_beton(tmp_path / "text.beton")
    with pytest.raises(DataError, match="does not exist"):
        open_beton(tmp_path / "missing.beton")


def test_other_field_names_are_refused(tmp_path):
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    class Items:
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return np.zeros((8, 8, 3), np.uint8), i

    path = tmp_path / "other.beton"
    DatasetWriter(
        str(path), {"img": RGBImageField(), "target": IntField()}, num_workers=1
    ).from_indexed_dataset(Items())
    with pytest.raises(DataError, match="other.beton has fields img \\(RGBImageField\\), target"):
        open_beton(path)
