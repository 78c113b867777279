"""Training-loader throughput: selfsup's loaders against the plain libraries, in one run.

Six pipelines produce the same thing, two augmented SimCLR views per image
(random-resized crop, flip, colour jitter, grayscale, blur where it fits)
as normalised float batches:

- ``lightly+torchvision``: torchvision ``ImageFolder`` + lightly's
  ``SimCLRTransform`` per sample in DataLoader workers (the common baseline);
- ``selfsup torchvision``: crops in DataLoader workers, the rest batched by
  ``BatchAugment`` on the training device;
- ``ffcv (plain)``: ffcv's own ops only (two random-resized-crop decoders,
  flip, normalise); ffcv has no colour jitter, grayscale or blur;
- ``selfsup ffcv``: the FFCV loader + ``BatchAugment`` (the full recipe);
- ``selfsup ffcv + device decode``: the same ``.beton``'s JPEG bytes decoded
  in the training process on its device (``data.decode=gpu``), then cropped
  and augmented there;
- ``selfsup memory``: the dataset held on the device (``data.loader=memory``,
  images at the training size), crops and augmentation batched there.

Reported: images per second (each image = 2 views), steady state after a
warm-up epoch part (which includes ffcv's JIT compilation), and each
pipeline's ratio to the ``lightly+torchvision`` baseline.

    python bench/loaders.py --data ../shared/data/imagenette --image-size 224
    python bench/loaders.py --data ../shared/data/cifar10-jpeg --image-size 32 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from benchlib import ensure_beton, sync

from selfsup.pipelines.config import AugmentConfig
from selfsup.pipelines.data.augment import BatchAugment
from selfsup.pipelines.data.loaders import ViewSpec
from selfsup.pipelines.data.sources import open_dataset
from selfsup.text import markdown_table

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def lightly_torchvision(args) -> Iterator[list[torch.Tensor]]:
    import torchvision
    from lightly.transforms import SimCLRTransform

    transform = SimCLRTransform(
        input_size=args.image_size, gaussian_blur=0.5 if args.image_size >= 64 else 0.0
    )
    folder = Path(args.data) / "train"
    dataset = torchvision.datasets.ImageFolder(str(folder), transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
        drop_last=True, persistent_workers=True,
    )  # fmt: skip
    while True:
        for views, _ in loader:
            yield [v.to(args.device, non_blocking=True) for v in views]


def view_spec(args) -> ViewSpec:
    """selfsup's batch contract for both loaders: two 0.08-1 crops per image."""
    return ViewSpec(
        image_size=args.image_size, crop_scale=(0.08, 1.0), num_views=2,
        batch_size=args.batch_size, num_workers=args.workers, seed=0,
    )  # fmt: skip


def augmented(loader, args) -> Iterator[list[torch.Tensor]]:
    """A selfsup loader's batches through ``BatchAugment`` on the device, epoch after epoch."""
    augment = BatchAugment(AugmentConfig(), args.image_size, MEAN, STD).to(args.device)
    step = 0
    for epoch in range(10**6):
        for batch in loader.epoch_batches(epoch):
            views = [v.to(args.device, non_blocking=True) for v in batch.views]
            yield augment(views, seed=step)
            step += 1


def selfsup_torchvision(args) -> Iterator[list[torch.Tensor]]:
    from selfsup.pipelines.data.loaders import TorchvisionTrainLoader

    dataset = open_dataset("imagefolder", "train", args.data)
    loader = TorchvisionTrainLoader(dataset, view_spec(args), pin_memory=args.device.type == "cuda")
    return augmented(loader, args)


def selfsup_memory(args) -> Iterator[list[torch.Tensor]]:
    from selfsup.pipelines.data.memory_loader import MemoryTrainLoader

    dataset = open_dataset("imagefolder", "train", args.data)
    return augmented(MemoryTrainLoader(dataset, view_spec(args), args.device), args)


def selfsup_device_decode(args) -> Iterator[list[torch.Tensor]]:
    from selfsup.pipelines.data.device_decode import DeviceDecodeTrainLoader
    from selfsup.pipelines.data.encoded import EncodedBeton

    loader = DeviceDecodeTrainLoader(EncodedBeton(args.beton), view_spec(args), args.device)
    return augmented(loader, args)


def plain_ffcv(args) -> Iterator[list[torch.Tensor]]:
    import numpy as np
    from ffcv.fields.decoders import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.pipeline import PipelineSpec
    from ffcv.transforms import (
        NormalizeImage,
        RandomHorizontalFlip,
        ToDevice,
        ToTensor,
        ToTorchImage,
    )

    def view_ops():
        ops = [
            RandomResizedCropRGBImageDecoder((args.image_size,) * 2),
            RandomHorizontalFlip(),
            ToTensor(),
        ]
        if args.device.type == "cuda":
            ops.append(ToDevice(args.device, non_blocking=True))
        ops.append(ToTorchImage(channels_last=True))
        if args.device.type == "cuda":  # ffcv's NormalizeImage runs on the GPU or in numba
            ops.append(NormalizeImage(np.array(MEAN) * 255, np.array(STD) * 255, np.float16))
        return ops

    loader = Loader(
        args.beton, batch_size=args.batch_size, num_workers=args.workers, order=OrderOption.RANDOM,
        drop_last=True, os_cache=True,
        pipelines={
            "image": view_ops(),
            "label": [IntDecoder(), ToTensor()],
            "image_1": PipelineSpec("image", decoder=view_ops()[0], transforms=view_ops()[1:]),
        },
    )  # fmt: skip
    while True:
        for image, _, image_1 in loader:
            yield [image, image_1]


def selfsup_ffcv(args) -> Iterator[list[torch.Tensor]]:
    from selfsup.pipelines.data.ffcv_loader import FFCVTrainLoader

    return augmented(FFCVTrainLoader(args.beton, view_spec(args), device=args.device), args)


PIPELINES: dict[str, Callable] = {
    "lightly+torchvision": lightly_torchvision,
    "selfsup torchvision": selfsup_torchvision,
    "ffcv (plain)": plain_ffcv,
    "selfsup ffcv": selfsup_ffcv,
    "selfsup ffcv + device decode": selfsup_device_decode,
    "selfsup memory": selfsup_memory,
}


def measure(make: Callable, args) -> float:
    batches = make(args)
    for _ in range(args.warmup):
        next(batches)
    sync(args.device)
    started = time.perf_counter()
    for _ in range(args.batches):
        views = next(batches)
    sync(args.device)
    assert len(views) == 2
    return args.batches * args.batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="../shared/data/imagenette", help="class-folder dataset")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--max-resolution", type=int, default=256, help="stored size in the .beton")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30, help="timed batches")
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches first")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "selfsup-bench"))
    parser.add_argument("--only", help="comma-separated pipeline names")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args()
    args.device = torch.device(args.device)
    args.beton = str(ensure_beton(Path(args.data), Path(args.cache), args.max_resolution))
    names = args.only.split(",") if args.only else list(PIPELINES)
    results = {name: measure(PIPELINES[name], args) for name in names}
    base = results.get("lightly+torchvision")
    device = (
        torch.cuda.get_device_name()
        if args.device.type == "cuda"
        else platform.processor() or "cpu"
    )
    print(f"\n{args.image_size} px, batch {args.batch_size}, {args.workers} workers, {device}")
    rows = [[name, f"{rate:,.0f}", f"{rate / base:.2f}x" if base else "-"]
            for name, rate in results.items()]  # fmt: skip
    header = ["pipeline", "images/s (2 views each)", "vs lightly+torchvision"]
    print(*markdown_table(header, rows), sep="\n")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1
            )
        )


if __name__ == "__main__":
    main()
