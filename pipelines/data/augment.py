"""SimCLR's photometric augmentations as batched ops on the device.

Loaders deliver ``uint8`` random-resized crops; the rest of SimCLR's recipe
(horizontal flip, colour jitter, grayscale, Gaussian blur, solarize) runs
here on whole batches with random parameters drawn per sample, on the GPU
when there is one and on the CPU otherwise; normalisation and
``channels_last`` follow (:mod:`selfsup.pipelines.data.normalize`). One module serves every loader.

Why not kornia: its ``ColorJitter`` makes five passes over the batch with an
RGB -> HSV -> RGB round trip and ran at 183 images/s on 224 px images on two
CPU cores (bench/loaders.py), slower than the network it feeds. Here colour
jitter and grayscale are one per-sample 3x3 colour matrix plus offset, as in
DALI's colour twist: brightness, contrast and saturation use torchvision's
formulas, hue is a rotation in YIQ space (the standard linear approximation
of an HSV hue shift), applied in that fixed order and clamped once at the
end. Blur is a separable Gaussian with a per-sample sigma.

All random draws come from a generator seeded by the caller (the trainer
passes a seed derived from the run seed and the step), so augmentations
replay exactly after a resume and never touch torch's global RNG.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.pipelines.config import AugmentConfig
from selfsup.pipelines.data.normalize import Normalize

BLUR_MIN_IMAGE_SIZE = 64  # SimCLR drops blur on 32 px CIFAR images
BLUR_SIGMA = (0.1, 2.0)
# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
LUMA = (0.299, 0.587, 0.114)
RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def blur_probability(cfg: AugmentConfig, image_size: int) -> float:
    """Configured blur probability; by default 0.5 from 64 px up and off below."""
    if cfg.blur_prob is not None:
        return cfg.blur_prob
    return 0.5 if image_size >= BLUR_MIN_IMAGE_SIZE else 0.0


def blur_kernel_size(image_size: int) -> int:
    """About 10% of the image side, odd (SimCLR appendix A)."""
    size = max(3, int(0.1 * image_size))
    return size if size % 2 == 1 else size + 1


def colour_matrices(
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
    grayscale: torch.Tensor,
    mean_luma: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(B, 3, 3)`` matrices and ``(B, 3)`` offsets of the colour twist.

    Factors follow torchvision (1 = unchanged; ``hue`` in turns, 0 = unchanged);
    ``grayscale`` is a 0/1 flag applied after the jitter; ``mean_luma`` is each
    input image's mean grayscale value (contrast blends towards it).
    """
    batch = brightness.shape[0]
    dtype, device = brightness.dtype, brightness.device
    eye = torch.eye(3, dtype=dtype, device=device).expand(batch, 3, 3)
    ones = torch.ones(3, dtype=dtype, device=device)
    luma = torch.tensor(LUMA, dtype=dtype, device=device)
    to_gray = ones[:, None] * luma[None, :]  # each output channel = luma of the input
    # brightness, then contrast: y = c * (b x) + (1 - c) * b * mean_luma
    matrix = (contrast * brightness)[:, None, None] * eye
    offset = ((1 - contrast) * brightness * mean_luma)[:, None] * ones
    # saturation: blend with the image's own grayscale
    sat = saturation[:, None, None] * eye + (1 - saturation)[:, None, None] * to_gray
    matrix, offset = sat @ matrix, (sat @ offset[..., None])[..., 0]
    # hue: rotate the chroma plane (I, Q) of YIQ by 2 pi hue
    yiq = torch.tensor(RGB_TO_YIQ, dtype=dtype, device=device)
    angle = 2 * math.pi * hue
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(batch, 3, 3, dtype=dtype, device=device)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    hue_matrix = torch.linalg.inv(yiq) @ rotation @ yiq
    matrix, offset = hue_matrix @ matrix, (hue_matrix @ offset[..., None])[..., 0]
    # grayscale where drawn
    gray = grayscale[:, None, None] * to_gray + (1 - grayscale)[:, None, None] * eye
    return gray @ matrix, (gray @ offset[..., None])[..., 0]


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image (reflect padding, as torchvision)."""
    batch, channels, height, width = images.shape
    half = kernel_size // 2
    x = torch.arange(-half, half + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x[None, :] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(channels, 0)
    flat = images.reshape(1, batch * channels, height, width)
    flat = F.pad(flat, (half, half, half, half), mode="reflect")
    # Depthwise convolutions run ~3x faster channels-last on CPU (oneDNN).
    flat = flat.contiguous(memory_format=torch.channels_last)
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=batch * channels)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=batch * channels)
    return flat.reshape(batch, channels, height, width)


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
        self.cfg = cfg
        self.jitter = 0.8 * cfg.color_jitter_strength  # brightness/contrast/saturation range
        self.hue = 0.2 * cfg.color_jitter_strength
        self.blur_prob = blur_probability(cfg, image_size)
        self.blur_kernel = blur_kernel_size(image_size)
        self.normalize = Normalize(mean, std, channels_last)

    def draw(self, batch: int, seed: int) -> dict[str, torch.Tensor]:
        """Every random parameter of one call, drawn on the CPU from ``seed``."""
        g = torch.Generator().manual_seed(seed)

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(batch, generator=g)

        def chance(p: float) -> torch.Tensor:
            return (torch.rand(batch, generator=g) < p).float()

        cfg = self.cfg
        jitter = chance(cfg.color_jitter_prob)
        low, high = max(0.0, 1 - self.jitter), 1 + self.jitter

        def factor() -> torch.Tensor:  # 1 (unchanged) where jitter is not drawn
            return 1 + jitter * (uniform(low, high) - 1)

        return {
            "flip": chance(cfg.hflip_prob),
            "brightness": factor(),
            "contrast": factor(),
            "saturation": factor(),
            "hue": jitter * uniform(-self.hue, self.hue),
            "grayscale": chance(cfg.grayscale_prob),
            "blur": chance(self.blur_prob),
            "sigma": uniform(*BLUR_SIGMA),
            "solarize": chance(cfg.solarize_prob),
        }

    @torch.no_grad()
    def forward(self, views: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
        """Augment every view of a batch; ``seed`` fixes all random draws.

        Pixels stay on the 0..255 scale throughout (the colour twist is linear),
        which saves two passes over the batch.
        """
        batch = views[0].shape[0]
        images = torch.cat(views).float()
        n, _, height, width = images.shape
        p = {k: v.to(images.device, non_blocking=True) for k, v in self.draw(n, seed).items()}
        flip = p["flip"].bool()
        if flip.any():
            images[flip] = images[flip].flip(-1)
        luma = images.new_tensor(LUMA)
        mean_luma = torch.einsum("bchw,c->b", images, luma) / (height * width)
        matrix, offset = colour_matrices(
            p["brightness"], p["contrast"], p["saturation"], p["hue"], p["grayscale"], mean_luma
        )
        # M x + v for every image in one batched matmul, then one clamp.
        flat = torch.baddbmm(offset[..., None], matrix, images.reshape(n, 3, height * width))
        images = flat.reshape(n, 3, height, width).clamp_(0.0, 255.0)
        blur = p["blur"].bool()
        if blur.any():
            images[blur] = gaussian_blur(images[blur], p["sigma"][blur], self.blur_kernel)
        solarize = p["solarize"].bool()
        if solarize.any():
            chosen = images[solarize]
            images[solarize] = torch.where(chosen >= 127.5, 255.0 - chosen, chosen)
        return list(self.normalize(images).split(batch))
