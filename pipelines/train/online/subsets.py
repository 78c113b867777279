"""The labelled images an online monitor embeds, held in memory, and their embedding.

Each subset (a seeded random subset of a split, the one ``selfsup probe``
takes for the same size) is decoded and resized once, when the run starts,
into uint8 tensors: ``count x 3 x side x side`` bytes in all, shared out
between the ranks, so memory is bounded by the subset sizes. Every rank
embeds its contiguous share with the live backbone (equal shares, the last
padded, so sharded engines run the same forward passes on every rank); the
shares are gathered in order, so every rank holds every embedding.

Items are read one by one, without a ``DataLoader``: starting one draws a seed
from the global RNG, and the monitor must leave the training's RNG untouched.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from selfsup.pipelines.data.datasets import take_subset
from selfsup.pipelines.data.loaders import ResizeCenterCrop
from selfsup.pipelines.data.normalize import Normalize
from selfsup.pipelines.data.sources import open_dataset
from selfsup.pipelines.runtime.engines import Engine


@dataclass
class HeldImages:
    """One subset: this rank's share of the images, and every image's label."""

    images: torch.Tensor  # (share, 3, side, side) uint8, this rank's rows (the last padded)
    labels: torch.Tensor  # (count,) int64, the whole subset's, in subset order
    count: int


def hold_subset(
    dataset: str, split: str, path: str | Path | None, count: int, side: int, engine: Engine
) -> HeldImages:
    """This rank's share of ``count`` images of ``split`` (the probe's subset), resized."""
    subset = take_subset(open_dataset(dataset, split, path), count)
    resized = ResizeCenterCrop(subset, side)
    total = len(resized)
    share = math.ceil(total / engine.world_size)
    first = engine.rank * share
    rows = [min(i, total - 1) for i in range(first, first + share)]
    images = torch.stack([resized[i][0] for i in rows])
    labels = torch.as_tensor(subset.labels, dtype=torch.int64)
    return HeldImages(images, labels, total)


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode (BatchNorm statistics untouched), each submodule's own mode
    back afterwards (a frozen part stays frozen)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@torch.no_grad()
def embed(
    backbone: nn.Module,
    held: HeldImages,
    engine: Engine,
    normalize: Normalize,
    batch_size: int,
    dtype: torch.dtype | None,
    mirror: bool = False,
) -> torch.Tensor:
    """Every image's features ``(count, dim)``, float32 on this rank's device (collective);
    ``mirror``: of the images flipped left to right (a positive pair for alignment), each
    batch flipped as it is embedded, so the held images are never copied whole."""
    device = engine.device
    weights = next(backbone.parameters()).dtype  # DeepSpeed casts whole models to bf16/fp16
    amp = (
        torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )
    chunks = []
    for start in range(0, len(held.images), batch_size):
        images = normalize(held.images[start : start + batch_size].to(device))
        if mirror:
            images = images.flip(-1)
        with amp:
            chunks.append(backbone(images.to(weights)).float())
    return engine.gather_rows(torch.cat(chunks))[: held.count]
