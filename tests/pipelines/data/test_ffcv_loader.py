"""The FFCV loader against the real ffcv: views, epochs, resume position, copies."""

import logging

import numpy as np
import pytest
import torch

from selfsup.errors import ConfigError
from selfsup.pipelines.data.beton import WriteOptions, write_beton
from selfsup.pipelines.data.datasets import ArrayDataset
from selfsup.pipelines.data.loaders import TorchvisionTrainLoader, ViewSpec
from selfsup.pipelines.data.train_loader import choose_loader

pytestmark = pytest.mark.ffcv

N = 64


def identifiable_images(n: int = N, size: int = 32) -> np.ndarray:
    """Red channel = the sample's index everywhere (survives any crop); green/blue vary in space."""
    y, x = np.mgrid[0:size, 0:size]
    images = np.empty((n, size, size, 3), np.uint8)
    images[..., 0] = np.arange(n, dtype=np.uint8)[:, None, None]
    images[..., 1] = (8 * x).astype(np.uint8)
    images[..., 2] = (8 * y).astype(np.uint8)
    return images


@pytest.fixture(scope="module")
def dataset() -> ArrayDataset:
    return ArrayDataset(identifiable_images(), np.arange(N), [str(i) for i in range(N)])


@pytest.fixture(scope="module")
def beton(dataset, tmp_path_factory):
    path = tmp_path_factory.mktemp("ffcv") / "ids.beton"
    write_beton(dataset, path, WriteOptions(mode="raw", workers=1))
    return path


def make_loader(beton, **kwargs):
    from selfsup.pipelines.data.ffcv_loader import FFCVTrainLoader

    spec_options = dict(
        image_size=16, crop_scale=(0.2, 1.0), num_views=2, batch_size=8, num_workers=1, seed=3,
        rank=0, world_size=1,
    )  # fmt: skip
    spec_options |= {k: kwargs.pop(k) for k in list(kwargs) if k in spec_options}
    return FFCVTrainLoader(beton, ViewSpec(**spec_options), **kwargs)


@pytest.fixture(scope="module")
def loader(beton):
    return make_loader(beton)


def epoch_ids(loader, epoch, start_step=0):
    return [i for batch in loader.epoch_batches(epoch, start_step) for i in batch.labels.tolist()]


def test_every_epoch_yields_every_sample_once_in_a_new_order(loader):
    first, second = epoch_ids(loader, 0), epoch_ids(loader, 1)
    assert sorted(first) == sorted(second) == list(range(N))
    assert first != second
    assert loader.steps_per_epoch == N // 8


def test_views_are_independent_crops_of_the_same_image(loader):
    batch = next(iter(loader.epoch_batches(0)))
    assert len(batch.views) == 2
    for view in batch.views:
        assert view.shape == (8, 3, 16, 16) and view.dtype == torch.uint8
        # the red channel identifies the image each crop came from
        assert torch.equal(view[:, 0, 0, 0].long(), batch.labels)
        assert (view[:, 0] == view[:, 0, :1, :1]).all()
    different = [not torch.equal(batch.views[0][i, 1:], batch.views[1][i, 1:]) for i in range(8)]
    assert sum(different) >= 6  # two independent random crops rarely coincide


def test_starting_mid_epoch_gives_the_rest_of_the_same_order(loader):
    full = epoch_ids(loader, 2)
    assert epoch_ids(loader, 2, start_step=3) == full[3 * 8 :]


def test_sample_order_matches_the_torchvision_loader(loader, dataset):
    torchvision_loader = TorchvisionTrainLoader(
        dataset,
        ViewSpec(
            image_size=16, crop_scale=(0.2, 1.0), num_views=2, batch_size=8, num_workers=0, seed=3
        ),
    )
    expected = [i for b in torchvision_loader.epoch_batches(4) for i in b.labels.tolist()]
    assert epoch_ids(loader, 4) == expected


def test_yielded_batches_are_copies_that_later_batches_do_not_overwrite(loader):
    batches = loader.epoch_batches(5)
    first = next(batches)
    snapshot = [v.clone() for v in first.views], first.labels.clone()
    for _ in batches:  # ffcv reuses its buffers for these
        pass
    assert all(torch.equal(a, b) for a, b in zip(first.views, snapshot[0], strict=True))
    assert torch.equal(first.labels, snapshot[1])


def test_ranks_get_disjoint_shards(beton):
    shards = [epoch_ids(make_loader(beton, rank=r, world_size=2), 0) for r in range(2)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(N))


def test_quasi_random_order(beton):
    with pytest.raises(ConfigError, match="quasi_random does not support distributed"):
        make_loader(beton, order="quasi_random", rank=0, world_size=2)
    quasi = make_loader(beton, order="quasi_random")
    assert sorted(epoch_ids(quasi, 0)) == list(range(N))
    assert epoch_ids(quasi, 1, start_step=2)  # resumable too


def test_subset_and_too_small_dataset(beton):
    subset = make_loader(beton, train_samples=32)
    ids = epoch_ids(subset, 0)
    assert len(ids) == 32 and len(set(ids)) == 32
    with pytest.raises(ConfigError, match="fewer than one batch"):
        make_loader(beton, batch_size=128)


def test_loader_choice(caplog, beton):
    assert choose_loader("ffcv", str(beton)) == "ffcv"
    assert choose_loader("auto", str(beton)) == "ffcv"
    with caplog.at_level(logging.INFO, logger="selfsup"):
        assert choose_loader("auto", None) == "torchvision"
    assert "data.beton is not set, using the torchvision loader" in caplog.text
    with pytest.raises(ConfigError, match="data.loader=ffcv needs a .beton file"):
        choose_loader("ffcv", None)
