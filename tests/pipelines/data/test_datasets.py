import gzip

import numpy as np
import pytest
import torch

from selfsup.errors import DataError
from selfsup.pipelines.data.datasets import (
    ArrayDataset,
    read_cifar10_pickle,
    read_fashion_mnist,
    read_idx,
    read_image,
    read_image_folder,
    take_subset,
)


def test_cifar_pickle_reader_returns_exact_pixels_and_labels(tmp_path, datagen):
    folder = datagen.write_cifar10_pickles(tmp_path / "cifar-10-batches-py", per_batch=20)
    train = read_cifar10_pickle(folder, "train")
    test = read_cifar10_pickle(folder, "test")
    assert len(train) == 100 and len(test) == 20
    # What the writer put into data_batch_2, drawn again from its seed (no unpickling).
    images, labels = datagen.class_images(2, 10, 32, seed=1)
    image, label = train[20]  # first image of the second batch
    expected = torch.from_numpy(images[0].transpose(2, 0, 1).copy())
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert torch.equal(image, expected)
    assert label == labels[0]


def test_cifar_reader_names_a_missing_batch(tmp_path, datagen):
    folder = datagen.write_cifar10_pickles(tmp_path / "c")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3 is missing"):
        read_cifar10_pickle(folder, "train")


def test_cifar_reader_rejects_a_non_pickle(tmp_path, datagen):
    folder = datagen.write_cifar10_pickles(tmp_path / "c")
    (folder / "test_batch").write_text("not a pickle")
    with pytest.raises(DataError, match="test_batch is not a CIFAR-10 python batch"):
        read_cifar10_pickle(folder, "test")


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_round_trips(tmp_path, datagen, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = datagen.write_idx(tmp_path / "x-idx3-ubyte", array, compress=compress)
    assert np.array_equal(read_idx(path), array)


def test_idx_reader_detects_truncation_and_bad_magic(tmp_path, datagen):
    path = datagen.write_idx(tmp_path / "x", np.zeros((4, 5, 5), np.uint8), compress=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x01\x02\x03\x04rest"))
    with pytest.raises(DataError, match="bad magic"):
        read_idx(bad)


def test_fashion_mnist_grayscale_is_expanded_to_three_equal_channels(tmp_path, datagen):
    folder = datagen.write_fashion_mnist(tmp_path / "raw", train=20, test=10)
    train = read_fashion_mnist(folder, "train")
    image, label = train[0]
    assert image.shape == (3, 28, 28)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert 0 <= label < 10 and len(read_fashion_mnist(folder, "test")) == 10


def test_image_folder_scan_and_grayscale_rule(tmp_path, datagen):
    root = datagen.write_image_folder(tmp_path / "imgs", per_class=2, classes=3)
    dataset = read_image_folder(root / "train")
    assert dataset.classes == ["n00000000", "n00000001", "n00000002"]
    assert len(dataset) == 6
    assert sorted(dataset.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    shapes = {dataset[i][0].shape for i in range(len(dataset))}
    assert shapes == {(3, 40, 40)}  # grayscale files included


def test_grayscale_jpeg_channels_are_copies(tmp_path):
    from PIL import Image

    path = tmp_path / "gray.jpg"
    Image.fromarray(np.full((8, 8), 77, np.uint8)).save(path)
    image = read_image(path)
    assert image.shape == (3, 8, 8)
    assert torch.equal(image[0], image[2])


def test_unreadable_image_names_the_file(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(DataError, match="cannot read image .*broken.jpg"):
        read_image(path)


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        read_image_folder(tmp_path / "empty")
    (tmp_path / "noimg" / "cat").mkdir(parents=True)
    (tmp_path / "noimg" / "cat" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="holds no images"):
        read_image_folder(tmp_path / "noimg")


def test_subset_is_seeded_and_spans_classes():
    labels = np.repeat(np.arange(10), 50)  # stored class by class, like class folders
    dataset = ArrayDataset(np.zeros((500, 4, 4, 3), np.uint8), labels, [str(i) for i in range(10)])
    a = take_subset(dataset, 100, seed=1)
    b = take_subset(dataset, 100, seed=1)
    assert len(a) == 100 and np.array_equal(a.labels, b.labels)
    assert len(set(a.labels.tolist())) == 10
    assert take_subset(dataset, None) is dataset
