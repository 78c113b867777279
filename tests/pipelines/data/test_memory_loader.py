"""The device-resident loader: the batch contract, order, shards and replay of the other loaders."""

import numpy as np
import pytest
import torch

from selfsup.errors import ConfigError
from selfsup.pipelines.config import load_config
from selfsup.pipelines.data.datasets import ArrayDataset
from selfsup.pipelines.data.loaders import TorchvisionTrainLoader, ViewSpec
from selfsup.pipelines.data.memory_loader import MemoryTrainLoader
from selfsup.pipelines.data.sources import open_dataset
from selfsup.pipelines.data.train_loader import build_train_loader

N = 48
CPU = torch.device("cpu")


def indexed(n: int = N, size: int = 24) -> ArrayDataset:
    """Image i is filled with the value i: any crop of it says which sample it is."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, size, size, 3))
    return ArrayDataset(images.copy(), np.arange(n) % 10, [str(i) for i in range(10)])


def spec(views: int = 2, rank: int = 0, world: int = 1, **kwargs) -> ViewSpec:
    options = dict(image_size=16, crop_scale=(0.2, 1.0), num_views=views, batch_size=8,
                   num_workers=0, seed=5, rank=rank, world_size=world)  # fmt: skip
    return ViewSpec(**(options | kwargs))


def ids(batch) -> list[int]:
    return batch.views[0][:, 0, 0, 0].tolist()


def test_batches_keep_the_contract_and_the_torchvision_loaders_order():
    dataset = indexed()
    memory = MemoryTrainLoader(dataset, spec(views=3), CPU)
    reference = TorchvisionTrainLoader(dataset, spec(views=3))
    assert memory.steps_per_epoch == reference.steps_per_epoch == N // 8
    for epoch in (0, 1):
        ours, theirs = list(memory.epoch_batches(epoch)), list(reference.epoch_batches(epoch))
        assert len(ours) == len(theirs) == N // 8
        for a, b in zip(ours, theirs, strict=True):
            assert len(a.views) == 3
            assert all(v.shape == (8, 3, 16, 16) and v.dtype == torch.uint8 for v in a.views)
            assert ids(a) == ids(b) and torch.equal(a.labels, b.labels)
            for view in a.views:  # every pixel of every view comes from its own image
                assert torch.equal(view, view[:, :1, :1, :1].expand_as(view))
                assert torch.equal(view[:, 0, 0, 0], a.views[0][:, 0, 0, 0])


def test_two_ranks_get_disjoint_shards_and_resume_replays_crops_bit_for_bit():
    rng = np.random.default_rng(0)
    dataset = ArrayDataset(
        rng.integers(0, 255, (N, 24, 24, 3), dtype=np.uint8), np.arange(N), ["x"]
    )
    shards = [
        [int(i) for b in MemoryTrainLoader(dataset, spec(rank=r, world=2), CPU).epoch_batches(1)
         for i in b.labels]
        for r in (0, 1)
    ]  # fmt: skip
    assert not set(shards[0]) & set(shards[1]) and len(shards[0] + shards[1]) == N
    loader = MemoryTrainLoader(dataset, spec(), CPU)
    whole = list(loader.epoch_batches(2))
    resumed = list(MemoryTrainLoader(dataset, spec(), CPU).epoch_batches(2, start_step=3))
    assert len(resumed) == len(whole) - 3
    for a, b in zip(whole[3:], resumed, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.views, b.views, strict=True))
    assert not torch.equal(whole[0].views[0], whole[0].views[1])  # views are different crops


def test_images_of_different_sizes_are_held_at_memory_side(data_root):
    folder = open_dataset("imagefolder", "train", data_root / "imagenette")
    loader = MemoryTrainLoader(folder, spec(batch_size=4), CPU, side=20)
    assert loader.images.shape == (len(folder), 3, 20, 20) and loader.images.dtype == torch.uint8
    batch = next(iter(loader.epoch_batches(0)))
    assert batch.views[0].shape == (4, 3, 16, 16)


def test_what_the_memory_loader_cannot_do_is_one_clear_error(data_root, tmp_path):
    with pytest.raises(ConfigError, match="random-resized crops only"):
        MemoryTrainLoader(indexed(), spec(crop="pad"), CPU)
    with pytest.raises(ConfigError, match=r"need .* GiB, more than half .* lower data.memory_side"):
        MemoryTrainLoader(indexed(), spec(), CPU, side=60_000)
    config = load_config(
        None,
        [f"data.path={data_root / 'cifar-10-batches-py'}", "data.loader=memory",
         "data.batch_size=8", "data.num_workers=0"],
    )  # fmt: skip
    loader = build_train_loader(config)
    assert isinstance(loader, MemoryTrainLoader) and loader.images.shape[1:] == (3, 32, 32)
