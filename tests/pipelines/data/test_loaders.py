import numpy as np
import torch

from selfsup.pipelines.data.datasets import ArrayDataset
from selfsup.pipelines.data.loaders import (
    ResumableSampler,
    TorchvisionTrainLoader,
    ViewSpec,
    eval_loader,
    global_positions,
)


def indexed_dataset(n: int = 40, size: int = 16) -> ArrayDataset:
    """Image i is filled with value i, so batches reveal which samples they hold."""
    images = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None], size * size * 3, axis=1)
    return ArrayDataset(
        images.reshape(n, size, size, 3), np.arange(n) % 10, [str(i) for i in range(10)]
    )


def make_loader(dataset, batch_size=8, workers=0, seed=3, rank=0, world=1, views=2):
    spec = ViewSpec(
        image_size=8, crop_scale=(0.2, 1.0), num_views=views, batch_size=batch_size,
        num_workers=workers, seed=seed, rank=rank, world_size=world,
    )  # fmt: skip
    return TorchvisionTrainLoader(dataset, spec)


def sample_ids(batch) -> list[int]:
    return batch.views[0][:, 0, 0, 0].tolist()  # the fill value identifies the sample


def test_every_epoch_yields_every_sample_once_in_a_new_order():
    loader = make_loader(indexed_dataset(40))
    epochs = [[i for b in loader.epoch_batches(e) for i in sample_ids(b)] for e in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(40))
    assert epochs[0] != epochs[1]
    assert loader.steps_per_epoch == 5


def test_views_are_independent_crops_of_the_same_image():
    dataset = ArrayDataset(
        np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8),
        np.zeros(8), ["a"],
    )  # fmt: skip
    batch = next(iter(make_loader(dataset, batch_size=8, views=3).epoch_batches(0)))
    assert len(batch.views) == 3 and batch.views[0].shape == (8, 3, 8, 8)
    assert batch.views[0].dtype == torch.uint8
    assert not torch.equal(batch.views[0], batch.views[1])
    assert not torch.equal(batch.views[1], batch.views[2])


def test_batches_do_not_depend_on_worker_count():
    dataset = ArrayDataset(
        np.random.default_rng(1).integers(0, 255, (32, 24, 24, 3), dtype=np.uint8),
        np.arange(32) % 10, [str(i) for i in range(10)],
    )  # fmt: skip
    in_process = list(make_loader(dataset, workers=0).epoch_batches(1))
    in_workers = list(make_loader(dataset, workers=2).epoch_batches(1))
    for a, b in zip(in_process, in_workers, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.views, b.views, strict=True))


def test_starting_mid_epoch_gives_the_remaining_batches_exactly():
    dataset = indexed_dataset(40)
    full = list(make_loader(dataset).epoch_batches(2))
    resumed = list(make_loader(dataset).epoch_batches(2, start_step=3))
    assert len(resumed) == 2
    for a, b in zip(full[3:], resumed, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.views, b.views, strict=True))
        assert torch.equal(a.labels, b.labels)


def test_ranks_get_disjoint_shards_that_cover_the_epoch():
    dataset = indexed_dataset(40)
    shards = [
        [
            i
            for b in make_loader(dataset, batch_size=4, rank=r, world=2).epoch_batches(0)
            for i in sample_ids(b)
        ]
        for r in range(2)
    ]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(40))


def test_sampler_seeds_are_per_sample_and_per_epoch():
    sampler = ResumableSampler(10, seed=5)
    sampler.set_epoch(0)
    first = dict(iter(sampler))
    sampler.set_epoch(1)
    second = dict(iter(sampler))
    assert len(set(first.values())) == 10
    assert all(first[i] != second[i] for i in range(10))


def test_eval_loader_resizes_and_keeps_order(datagen, tmp_path):
    images, labels = datagen.class_images(2, 3, 40)
    loader = eval_loader(
        ArrayDataset(images, labels, ["a", "b", "c"]), 32, batch_size=4, num_workers=0
    )
    out, out_labels = zip(*loader, strict=True)
    assert torch.cat(out).shape == (6, 3, 32, 32)
    assert torch.cat(out_labels).tolist() == labels.tolist()


def test_global_positions_name_the_same_samples_on_any_number_of_ranks_and_micro_batches():
    # A step of 8 samples: 1 rank x 1 batch of 8, 2 ranks x 4, 2 ranks x 2 micro-batches of 2.
    def step_samples(world: int, accum: int, step: int) -> dict[int, int]:
        size = 8 // (world * accum)
        named = {}
        for rank in range(world):
            order = ResumableSampler(40, world, rank, seed=3).epoch_indices(0)
            for k in range(accum):
                start = (step * accum + k) * size
                where = global_positions(rank, world, k, size)
                named.update(zip(where.tolist(), order[start : start + size].tolist(), strict=True))
        return named

    for step in range(2):
        one = step_samples(1, 1, step)
        assert sorted(one) == list(range(8))
        assert step_samples(2, 1, step) == one
        assert step_samples(2, 2, step) == one
