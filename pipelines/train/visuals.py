"""Images for TensorBoard: what the augmentations make, and what masked models rebuild.

- ``train/augmentations``: at the first step of every start, each row one
  image, each column one augmented view (after normalisation is undone);
- ``reconstruction/{original,masked,output}``: every ``train.image_every``
  steps for MAE and SimMIM, the same few images with the same mask each time,
  so the panels show the reconstructions improving; ``masks/{original,context,
  targets}`` for I-JEPA (what the context encoder sees, what is predicted).

Drawing the masks uses a generator state of its own and the model runs in eval
mode (BatchNorm statistics untouched), so logging images never changes
training (exact resume holds with images on).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.utils import make_grid

from selfsup.pipelines.train.monitor import Monitor

PREVIEW_IMAGES = 8
MASK_SEED = 1_234_567  # the same masks at every logging step


def denormalize(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Normalised images back to [0, 1] for display."""
    mean_t = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() * std_t + mean_t).clamp(0.0, 1.0)


def augmentation_grid(
    views: list[torch.Tensor], mean: list[float], std: list[float]
) -> torch.Tensor:
    """One row per image, one column per view."""
    count = min(PREVIEW_IMAGES, views[0].shape[0])
    tiles = torch.stack([denormalize(v[:count], mean, std) for v in views], dim=1).flatten(0, 1)
    return make_grid(tiles.cpu(), nrow=len(views), padding=2)


@torch.no_grad()
def log_reconstructions(
    monitor: Monitor,
    model: nn.Module,
    images: torch.Tensor,
    step: int,
    mean: list[float],
    std: list[float],
) -> None:
    """Original, masked and rebuilt panels of ``images`` (every rank computes; main writes)."""
    devices = [images.device] if images.device.type == "cuda" else []
    # Eval mode: BatchNorm (SimMIM's ResNets) must not fold the preview images
    # into its running statistics, or logging would change the trained model.
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(MASK_SEED)
            panels = model.reconstruct(images)  # type: ignore[operator]  # can_reconstruct checked
    finally:
        model.train(was_training)
    # A method names its panels (I-JEPA: its masks); MAE's and SimMIM's keep their tags.
    group = getattr(model, "panel_group", "reconstruction")
    renamed = {"reconstruction": "output"}
    named = {"original": images, **{renamed.get(k, k): v for k, v in panels.items()}}
    for name, batch in named.items():
        grid = make_grid(denormalize(batch, mean, std).cpu(), nrow=PREVIEW_IMAGES, padding=2)
        monitor.add_image(f"{group}/{name}", grid, step)
