"""Frozen-backbone features for a whole dataset, several backbones in one pass."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from selfsup.pipelines.data.normalize import Normalize


@torch.no_grad()
def extract_features(
    backbones: Sequence[nn.Module],
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    mean: list[float],
    std: list[float],
    autocast_dtype: torch.dtype | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Features ``(N, D)`` (float32, on CPU) of every backbone, and the labels ``(N,)``.

    Each batch is decoded once and fed to all backbones, so probing a trained
    backbone beside its random-init baseline costs one pass over the data.
    """
    normalize = Normalize(mean, std).to(device)
    for backbone in backbones:
        backbone.eval().to(device)
    chunks: list[list[torch.Tensor]] = [[] for _ in backbones]
    labels: list[torch.Tensor] = []
    amp = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    for images, batch_labels in loader:
        images = normalize(images.to(device, non_blocking=True))
        with amp:
            for i, backbone in enumerate(backbones):
                chunks[i].append(backbone(images).float().cpu())
        labels.append(batch_labels)
    return [torch.cat(c) for c in chunks], torch.cat(labels)
