"""SimCLR's photometric augmentations as batched ops on the device.

Loaders deliver ``uint8`` random-resized crops; the rest of SimCLR's recipe
(flip, colour jitter, grayscale, Gaussian blur, solarize) runs here on whole
batches, with random parameters drawn per sample, on the GPU when there is
one and on the CPU otherwise. The ops are kornia's (the field's library for
batched, per-sample augmentation; its ``ColorJitter`` follows torchvision's
formulas). Normalisation and ``channels_last`` follow.

Each call is seeded by the caller (the trainer passes a seed derived from the
run seed and the step), so augmentations replay exactly after a resume.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn

from selfsup.pipelines.config import AugmentConfig

BLUR_MIN_IMAGE_SIZE = 64  # SimCLR drops blur on 32 px CIFAR images


def blur_probability(cfg: AugmentConfig, image_size: int) -> float:
    """Configured blur probability; by default 0.5 from 64 px up and off below."""
    if cfg.blur_prob is not None:
        return cfg.blur_prob
    return 0.5 if image_size >= BLUR_MIN_IMAGE_SIZE else 0.0


def blur_kernel_size(image_size: int) -> int:
    """About 10% of the image side, odd (SimCLR appendix A)."""
    size = max(3, int(0.1 * image_size))
    return size if size % 2 == 1 else size + 1


class Normalize(nn.Module):
    """``uint8`` images to normalised float, optionally ``channels_last``."""

    def __init__(self, mean: list[float], std: list[float], channels_last: bool = False) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.channels_last = channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = (images.float() - self.mean) / self.std
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out


class BatchAugment(nn.Module):
    """Flip, colour jitter, grayscale, blur and solarize with per-sample random parameters."""

    def __init__(
        self,
        cfg: AugmentConfig,
        image_size: int,
        mean: list[float],
        std: list[float],
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        s = cfg.color_jitter_strength
        ops: list[nn.Module] = [K.RandomHorizontalFlip(p=cfg.hflip_prob)]
        if cfg.color_jitter_prob > 0:
            ops.append(K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=cfg.color_jitter_prob))
        if cfg.grayscale_prob > 0:
            ops.append(K.RandomGrayscale(p=cfg.grayscale_prob))
        blur_p = blur_probability(cfg, image_size)
        if blur_p > 0:
            k = blur_kernel_size(image_size)
            ops.append(K.RandomGaussianBlur((k, k), (0.1, 2.0), p=blur_p))
        if cfg.solarize_prob > 0:
            # thresholds=0.0 and additions=0.0 fix the threshold at 0.5 (no jitter), as in BYOL.
            ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=cfg.solarize_prob))
        self.ops = nn.Sequential(*ops)
        self.normalize = Normalize(mean, std, channels_last)

    @torch.no_grad()
    def forward(self, views: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
        """Augment every view of a batch; ``seed`` fixes all random draws."""
        batch = views[0].shape[0]
        images = torch.cat(views).float().div_(255.0)
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            images = self.ops(images)
        return list(self.normalize(images.mul_(255.0)).split(batch))
