"""Pixel normalisation, shared by training (after augmentation) and evaluation."""

from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """Images in [0, 255] (``uint8`` or float) to normalised float, optionally ``channels_last``."""

    def __init__(self, mean: list[float], std: list[float], channels_last: bool = False) -> None:
        super().__init__()
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.channels_last = channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = (images.float() - self.mean).div_(self.std)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out
