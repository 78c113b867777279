"""Random-resized crops of a whole batch in one op, drawn per sample without a per-sample RNG.

The device-resident loader and the on-device JPEG decoder cut ``num_views``
crops per image here rather than per sample in worker processes:

- the draws are a pure function of ``(run seed, epoch, dataset index, view)``
  (a counter-based hash, :func:`sample_uniforms`), computed for the whole
  batch at once with numpy: no ``torch.Generator`` per sample (10 us each,
  a fifth of a small model's step at 30,000 images/s), and an interrupted run
  replays them exactly whatever the batch size, rank count or resume step;
- the boxes follow torchvision's ``RandomResizedCrop.get_params`` (ten tries
  of area share and log aspect ratio, then the centre crop of clamped ratio),
  vectorised (:func:`resized_crop_boxes`);
- every crop of the batch is resampled to ``size x size`` by one
  ``torchvision.ops.roi_align`` call (:func:`cut_crops`): bilinear, averaging
  ``ceil(crop side / size)`` samples per output pixel and axis when it shrinks
  (an area filter, the antialiasing ``v2.RandomResizedCrop`` gets from its
  resize). The bilinear taps reach at most one pixel past a crop's edge:
  clamped at the batch tensor's border, and a batch of images of different
  sizes repeats each image's last row and column into its padding
  (:func:`pad_to_batch`), so no zero padding is ever blended in.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.ops import roi_align

from selfsup.pipelines.runtime.seeding import derive_seed

CROP_RATIO = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10  # as torchvision's RandomResizedCrop
DRAWS_PER_VIEW = 2 * CROP_ATTEMPTS + 2  # (area, log ratio) per try, then the position

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijective, well-mixed hash of uint64 counters."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def crop_key(seed: int, epoch: int) -> int:
    """The key of an epoch's crop draws (each sample's come from it and its index)."""
    return derive_seed(seed, epoch)


def sample_uniforms(epoch_key: int, indices: np.ndarray, count: int) -> np.ndarray:
    """``(len(indices), count)`` floats in [0, 1), a pure function of the key and each index.

    ``epoch_key`` is derived from the run seed and the epoch; sample ``i``'s
    numbers do not depend on which other samples share its batch.
    """
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        base = _splitmix64(np.uint64(epoch_key) ^ indices.astype(np.uint64))
        counters = base[:, None] + np.arange(count, dtype=np.uint64)[None, :] * _GOLDEN
        bits = _splitmix64(counters) >> np.uint64(11)  # 53 bits: exact in float64
    return bits.astype(np.float64) / float(1 << 53)


def resized_crop_boxes(
    uniforms: np.ndarray,
    heights: np.ndarray,
    widths: np.ndarray,
    scale: tuple[float, float],
    ratio: tuple[float, float] = CROP_RATIO,
) -> np.ndarray:
    """Integer crop boxes ``(N, 4)`` as ``(left, top, width, height)``, one per row of draws.

    ``uniforms`` holds :data:`DRAWS_PER_VIEW` numbers per row; rows may come
    from images of different sizes. Same rule as torchvision's
    ``RandomResizedCrop.get_params``.
    """
    area = (heights * widths).astype(np.float64)[:, None]
    tries = uniforms[:, : 2 * CROP_ATTEMPTS].reshape(-1, CROP_ATTEMPTS, 2)
    target = area * (scale[0] + (scale[1] - scale[0]) * tries[..., 0])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(log_low + (log_high - log_low) * tries[..., 1])
    w = np.round(np.sqrt(target * aspect)).astype(np.int64)
    h = np.round(np.sqrt(target / aspect)).astype(np.int64)
    fits = (w > 0) & (h > 0) & (w <= widths[:, None]) & (h <= heights[:, None])
    first = fits.argmax(axis=1)
    rows = np.arange(len(uniforms))
    w, h = w[rows, first], h[rows, first]
    # No try fits: the whole image, its ratio clamped into range, centred.
    fallback = ~fits.any(axis=1)
    in_ratio = widths / np.maximum(heights, 1)
    fb_w = np.where(in_ratio > ratio[1], np.round(heights * ratio[1]).astype(np.int64), widths)
    fb_h = np.where(in_ratio < ratio[0], np.round(widths / ratio[0]).astype(np.int64), heights)
    w, h = np.where(fallback, fb_w, w), np.where(fallback, fb_h, h)
    position = uniforms[:, 2 * CROP_ATTEMPTS :]
    top = np.floor(position[:, 0] * (heights - h + 1)).astype(np.int64)
    left = np.floor(position[:, 1] * (widths - w + 1)).astype(np.int64)
    top = np.where(fallback, (heights - h) // 2, top)
    left = np.where(fallback, (widths - w) // 2, left)
    return np.stack([left, top, w, h], axis=1)


def view_boxes(
    epoch_key: int,
    indices: np.ndarray,
    heights: np.ndarray,
    widths: np.ndarray,
    num_views: int,
    scale: tuple[float, float],
) -> np.ndarray:
    """``(num_views * B, 4)`` boxes, view-major: view 0 of every sample, then view 1, ..."""
    draws = sample_uniforms(epoch_key, indices, num_views * DRAWS_PER_VIEW)
    per_view = draws.reshape(len(indices), num_views, DRAWS_PER_VIEW).transpose(1, 0, 2)
    tile = np.tile
    return resized_crop_boxes(
        per_view.reshape(-1, DRAWS_PER_VIEW),
        tile(heights, num_views),
        tile(widths, num_views),
        scale,
    )


def cut_crops(images: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
    """``uint8 (len(boxes), 3, size, size)`` crops of ``uint8 (B, 3, H, W)`` images.

    Exact copies where a box is ``size`` pixels square, area-averaged where
    it is larger, bilinear where smaller.

    Box ``k`` (``(left, top, width, height)`` in pixels) is cut from image
    ``k % B``: view-major order, as :func:`view_boxes` gives.
    """
    batch = images.shape[0]
    box = torch.as_tensor(boxes, dtype=torch.float32)
    owner = torch.arange(len(boxes), dtype=torch.float32) % batch
    # Box edges on pixel edges (aligned=True): a crop of the output's size is
    # copied exactly, a larger one is averaged over each output pixel's area.
    rois = torch.stack(
        [owner, box[:, 0], box[:, 1], box[:, 0] + box[:, 2], box[:, 1] + box[:, 3]], 1
    ).to(images.device, non_blocking=True)
    # sampling_ratio=0: ceil(crop side / size) samples per output pixel and axis, per box.
    crops = roi_align(
        images.float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=0, aligned=True
    )
    return crops.round_().clamp_(0, 255).to(torch.uint8)


def pad_to_batch(images: list[torch.Tensor]) -> torch.Tensor:
    """``(B, 3, H_max + 1, W_max + 1)`` batch of ``(3, H, W)`` images of any sizes.

    Each image sits at the top left, its last row and column repeated once
    into the padding (what :func:`cut_crops`' bilinear taps may touch): one
    copy per image, then one op for all the rows and one for all the columns.
    """
    heights = torch.tensor([int(image.shape[1]) for image in images])
    widths = torch.tensor([int(image.shape[2]) for image in images])
    first = images[0]
    batch = first.new_zeros((len(images), 3, int(heights.max()) + 1, int(widths.max()) + 1))
    for slot, image in zip(batch, images, strict=True):
        slot[:, : image.shape[1], : image.shape[2]] = image
    owner = torch.arange(len(images), device=first.device)
    heights, widths = heights.to(first.device), widths.to(first.device)
    batch[owner, :, heights, :] = batch[owner, :, heights - 1, :]
    batch[owner, :, :, widths] = batch[owner, :, :, widths - 1]
    return batch
