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


def tiny_jpeg_folder(root: Path, splits: tuple[str, ...] = ("train",)) -> Path:
    """64 random 40 px JPEGs in 4 class folders per split (the --smoke data; kept for the
    next run)."""
    import numpy as np
    from PIL import Image

    if all((root / split).is_dir() for split in splits):
        return root
    rng = np.random.default_rng(0)
    for split in splits:
        for i in range(64):
            folder = root / split / f"c{i % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def machine_name() -> str:
    """The GPU's name, else the CPU's model (and core count) as /proc/cpuinfo gives it."""
    import os

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return "cpu"
