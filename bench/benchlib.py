"""What the bench/ scripts share: device synchronisation and the cached .beton of a folder."""

from __future__ import annotations

from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings must not end before the GPU does)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ensure_beton(folder: Path, cache: Path, max_resolution: int | None = None) -> Path:
    """``folder``'s training images as a .beton of JPEGs in ``cache`` (written once, reused)."""
    from selfsup.pipelines.data.beton import WriteOptions, write_beton
    from selfsup.pipelines.data.sources import open_dataset

    suffix = f"-{max_resolution}" if max_resolution else ""
    path = cache / f"{folder.name}-train-jpg{suffix}.beton"
    if not path.is_file():
        dataset = open_dataset("imagefolder", "train", folder)
        options = WriteOptions(mode="jpg", max_resolution=max_resolution, jpeg_quality=90)
        print(write_beton(dataset, path, options).line(), flush=True)
    return path
