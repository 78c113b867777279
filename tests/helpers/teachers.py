"""Teacher backbone files for distillation tests: real backbones, random weights of a seed."""

from __future__ import annotations

from pathlib import Path

import torch

from selfsup.pipelines.checkpoint.weights import BackboneInfo, save_backbone


def write_teacher(
    path: Path,
    seed: int,
    name: str = "resnet18",
    image_size: int = 32,
    cifar_stem: bool = False,
    **options,
) -> Path:
    """A backbone .pt file of ``name``, initialised from ``seed`` (mean/std 0.5: renormalised)."""
    info = BackboneInfo(name, "auto", cifar_stem, image_size, [0.5] * 3, [0.5] * 3, 0, str(path),
                        None, **options)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        save_backbone(path, info.build().trunk.state_dict(), info)
    return path
