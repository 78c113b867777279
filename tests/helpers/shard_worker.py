"""Run under torchrun by tests/pipelines/test_distributed_loaders.py.

Each rank builds both loaders for its shard, records the sample ids of two
epochs and all-gathers them; rank 0 writes every rank's ids as JSON.
"""

import json
import sys

import numpy as np
import torch.distributed as dist

from selfsup.pipelines.data.datasets import ArrayDataset
from selfsup.pipelines.data.loaders import TorchvisionTrainLoader, ViewSpec


def epoch_ids(loader, epoch):
    return [i for batch in loader.epoch_batches(epoch) for i in batch.labels.tolist()]


def main(beton: str, size: int, out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    spec = ViewSpec(
        image_size=8, crop_scale=(0.5, 1.0), num_views=2, batch_size=4, num_workers=1, seed=11,
        rank=rank, world_size=world,
    )  # fmt: skip
    images = np.zeros((size, 8, 8, 3), np.uint8)
    loaders = {
        "torchvision": TorchvisionTrainLoader(ArrayDataset(images, np.arange(size), ["x"]), spec)
    }
    if beton != "-":
        from selfsup.pipelines.data.ffcv_loader import FFCVTrainLoader

        loaders["ffcv"] = FFCVTrainLoader(beton, spec)
    result = {}
    for name, loader in loaders.items():
        for epoch in (0, 1):
            gathered = [None] * world
            dist.all_gather_object(gathered, epoch_ids(loader, epoch))
            result[f"{name}/{epoch}"] = gathered
    if rank == 0:
        with open(out, "w") as fh:
            json.dump(result, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
