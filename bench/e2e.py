"""End-to-end training images/s: ``selfsup train``'s own loop with each loader, in one run.

Each workload is SimCLR (two 0.08-1 random-resized crops, the full colour /
grayscale / blur recipe, a 2048-2048-128 head, SGD) on real JPEGs:

- ``r18_224`` / ``r50_224``: ResNet-18 / ResNet-50 at 224 px on Imagenette;
- ``r18_cifar32``: ResNet-18 with the CIFAR stem at 32 px on CIFAR-10.

Rows of a workload, all measured in the same process one after the other:

- ``ceiling``: the same model's training step on synthetic views already on
  the device (no data, no augmentation): what the loop could reach;
- ``lightly-style``: torchvision ``ImageFolder`` + lightly's
  ``SimCLRTransform`` in DataLoader workers feeding the same network written
  in plain torch (bench/train_step.py's ``PlainSimCLR``), the common baseline;
- ``torchvision``, ``ffcv``, ``ffcv + gpu decode``, ``memory``: the trainer
  (``selfsup.pipelines.train.trainer.train``, what ``selfsup train`` runs)
  with ``data.loader`` / ``data.decode`` set so; its images/s are the
  trainer's own windows (TensorBoard ``train/img_per_s``) after the first.

Each row is printed as images/s, its ratio to the ceiling and to the
lightly-style loop, and MFU on a GPU the FLOP table knows. ``torch.compile``
follows ``train.compile=auto`` (on for CUDA) for the ceiling and the trainer's
rows; the lightly-style loop stays eager (it is bound by its workers).

    python bench/e2e.py                                # all workloads (GPU)
    python bench/e2e.py --workload r18_cifar32 --windows 3
    python bench/e2e.py --smoke                        # tiny sizes and data: checks it runs
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from benchlib import ensure_beton, sync, tiny_jpeg_folder
from train_step import PlainSimCLR, config_step, time_steps

from selfsup.pipelines.config import RunConfig, load_config
from selfsup.pipelines.runtime.engines import compile_mode
from selfsup.pipelines.train.build import build_model
from selfsup.pipelines.train.monitor import read_scalars
from selfsup.pipelines.train.throughput import count_step_flops, peak_flops
from selfsup.pipelines.train.trainer import train
from selfsup.text import markdown_header, markdown_row

ROWS = ("ceiling", "lightly-style", "torchvision", "ffcv", "ffcv + gpu decode", "memory")
LOADER_ROWS = {
    "torchvision": ["data.loader=torchvision", "data.decode=cpu"],
    "ffcv": ["data.loader=ffcv", "data.decode=cpu"],
    "ffcv + gpu decode": ["data.loader=ffcv", "data.decode=gpu"],
    "memory": ["data.loader=memory"],
}


@dataclass(frozen=True)
class Workload:
    backbone: str
    image: int
    batch: int
    dataset: str  # folder under --data-root
    cifar_stem: bool = False


WORKLOADS = {
    "r18_224": Workload("resnet18", 224, 256, "imagenette"),
    "r50_224": Workload("resnet50", 224, 256, "imagenette"),
    "r18_cifar32": Workload("resnet18", 32, 512, "cifar10-jpeg", cifar_stem=True),
}


def run_config(w: Workload, args: argparse.Namespace, data: Path, extra: list[str]) -> RunConfig:
    """The run ``selfsup train`` would make of the workload and a loader's settings."""
    steps = args.window * (args.windows + 1)
    optimizer = "adamw" if args.engine == "deepspeed" else "sgd"  # as the DeepSpeed tests run
    return load_config(None, [
        "data.dataset=imagefolder", f"data.path={data}", f"data.image_size={w.image}",
        f"data.batch_size={args.batch_size or w.batch}", f"data.num_workers={args.workers}",
        f"model.backbone={w.backbone}", f"model.cifar_stem={w.cifar_stem}",
        "method.name=simclr", "method.proj_hidden_dim=2048", "method.proj_output_dim=128",
        f"optim.name={optimizer}", f"train.precision={args.precision}",
        f"train.device={args.device}",
        f"train.max_steps={steps}", f"train.log_every={args.window}", "train.image_every=1000000",
        "checkpoint.every_steps=1000000", f"train.engine={args.engine}", *extra,
    ])  # fmt: skip


def loop_rate(config: RunConfig, out: Path) -> float:
    """Images/s of the trainer's windows after the first (compilation, worker start-up)."""
    run = out / f"run-{time.monotonic_ns()}"
    config.run_dir = str(run)
    train(config)
    rates = [value for step, value in read_scalars(run / "tb", "train/img_per_s")]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return statistics.median(rates[1:] or rates)


def ceiling_rate(config: RunConfig, args: argparse.Namespace) -> float:
    device = torch.device(args.device)
    mode = compile_mode(config.train.compile, config.train.compile_mode, "single", device)
    step = config_step(config, device, mode)
    for _ in range(args.window):
        step()
    seconds = statistics.median(time_steps(step, device, args.window) for _ in range(args.windows))
    return config.data.batch_size / seconds


def lightly_style_rate(w: Workload, config: RunConfig, args: argparse.Namespace) -> float:
    """ImageFolder + lightly's SimCLRTransform + DataLoader, the same network in plain torch."""
    import torchvision
    from lightly.transforms import SimCLRTransform

    device = torch.device(args.device)
    transform = SimCLRTransform(input_size=w.image, gaussian_blur=0.5 if w.image >= 64 else 0.0)
    folder = torchvision.datasets.ImageFolder(str(Path(config.data.path) / "train"), transform)
    loader = torch.utils.data.DataLoader(
        folder, batch_size=config.data.batch_size, shuffle=True, num_workers=args.workers,
        drop_last=True, pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
    )  # fmt: skip
    model = PlainSimCLR(w.backbone, w.cifar_stem).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6)
    # Eager: this loop is bound by its workers (~850 img/s on 16 cores at 224 px, against
    # 2,400 for the eager ResNet-50 step), so compiling would only add start-up time.
    forward = model
    batches = _endless(loader)

    def step() -> None:
        views, _ = next(batches)
        views = [v.to(device, non_blocking=True) for v in views]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = forward(views)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.window):
        step()
    seconds = statistics.median(time_steps(step, device, args.window) for _ in range(args.windows))
    return config.data.batch_size / seconds


def _endless(loader):
    while True:
        yield from loader


def image_flops(config: RunConfig) -> float | None:
    """Training FLOPs per image (both views, forward and backward)."""
    views, batch, size = config.augment.num_views, config.data.batch_size, config.data.image_size
    with torch.device("meta"):  # shapes only
        model = build_model(config)
    flops = count_step_flops(
        model, lambda device: [torch.zeros(batch, 3, size, size, device=device)] * views
    )
    return None if flops is None else flops / batch


def measure_workload(name: str, args: argparse.Namespace, out: Path) -> dict[str, float]:
    w = WORKLOADS[name]
    if args.smoke:
        w = Workload(w.backbone, 32, 8, "tiny", w.cifar_stem)
    cache = Path(args.cache)
    data = tiny_jpeg_folder(cache / "tiny") if args.smoke else Path(args.data_root) / w.dataset
    if not (data / "train").is_dir():
        raise SystemExit(f"e2e: {data}/train does not exist; set --data-root (see ../shared/data)")
    beton = ensure_beton(data, cache)
    base = run_config(w, args, data, [f"data.beton={beton}"])
    rates: dict[str, float] = {}
    for row in args.rows.split(","):
        if row == "ceiling":
            rates[row] = ceiling_rate(base, args)
        elif row == "lightly-style":
            rates[row] = lightly_style_rate(w, base, args)
        else:
            config = run_config(w, args, data, [f"data.beton={beton}", *LOADER_ROWS[row]])
            rates[row] = loop_rate(config, out)
        print(f"  {name} {row}: {rates[row]:,.1f} img/s", flush=True)
    rates["flops_per_image"] = image_flops(base) or 0.0
    return rates


def _ratio(rate: float, base: float | None) -> str:
    return f"{rate / base:.2f}x" if base else "-"


def print_table(name: str, rates: dict[str, float], device: torch.device) -> None:
    peak, flops = peak_flops(device), rates["flops_per_image"]
    ceiling, lightly = rates.get("ceiling"), rates.get("lightly-style")
    print(f"\n{name}: images/s (2 views each), ratio to the ceiling and to the lightly-style loop")
    print(*markdown_header(["row", "img/s", "vs ceiling", "vs lightly-style", "MFU"]), sep="\n")
    for row, rate in rates.items():
        if row == "flops_per_image":
            continue
        mfu = f"{100 * rate * flops / peak:.1f}%" if peak and flops else "-"
        cells = [row, f"{rate:,.1f}", _ratio(rate, ceiling), _ratio(rate, lightly), mfu]
        print(markdown_row(cells), flush=True)


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="all", help="all, or comma-separated names")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows")
    parser.add_argument("--engine", default="single", help="train.engine of the loader rows")
    parser.add_argument(
        "--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    parser.add_argument("--batch-size", type=int, help="default: the workload's (256, or 512)")
    parser.add_argument("--window", type=int, default=10, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=3, help="timed windows (after one untimed)")
    parser.add_argument("--workers", type=int, default=len(__import__("os").sched_getaffinity(0)))
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--precision", default="bf16" if cuda else "fp32")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "selfsup-bench"))
    parser.add_argument("--json", help="write the rates here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and data: checks it runs")
    args = parser.parse_args()
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    names = list(WORKLOADS) if args.workload == "all" else args.workload.split(",")
    if args.smoke and args.workload == "all":
        names = ["r18_cifar32"]
    machine = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    print(f"# e2e on {machine}, torch {torch.__version__}, {args.workers} workers")
    results = {}
    with tempfile.TemporaryDirectory(prefix="selfsup-e2e-") as out:
        for name in names:
            results[name] = measure_workload(name, args, Path(out))
            print_table(name, results[name], device)
            if args.json:  # after each workload: a run cut short keeps what it measured
                record = {"machine": machine, "args": vars(args), "results": results}
                Path(args.json).write_text(json.dumps(record, indent=1))
    sync(device)


if __name__ == "__main__":
    main()
