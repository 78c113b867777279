"""Checkpoint save/load time and size: selfsup's DCP checkpoints against plain torch.save.

Model: SimCLR ResNet-50 (backbone + 2048-2048-128 projection head) with AdamW
state after one step, in one process. ``selfsup`` writes a DCP checkpoint with
the full protocol (temporary folder, fsync, rename, ``latest``, RNG files);
the baseline is ``torch.save`` of ``{"model", "optimizer"}`` state dicts to one
file (and ``torch.load`` + ``load_state_dict`` back), fsynced too so that both
include the time to reach the disk. Median of ``--repeat`` runs.

Then the training stall per checkpoint (``--stall-backbones``, ResNet-50 and
ViT-B states by default): how long ``CheckpointManager.save`` holds training
when it writes synchronously, against ``checkpoint.async_save`` (a copy into
CPU memory, pinned on CUDA, then DCP's ``async_save`` in a thread), in the
same process and run.

    python bench/checkpoint.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from selfsup.pipelines.checkpoint.background import BackgroundWriter
from selfsup.pipelines.checkpoint.manager import Cadence, CheckpointManager, TrainState
from selfsup.pipelines.config import load_config
from selfsup.pipelines.runtime.engines import Engine
from selfsup.pipelines.train.build import build_model
from selfsup.pipelines.train.optim import build_optimizer, build_scheduler
from selfsup.text import markdown_table


def setup(device: torch.device, backbone: str = "resnet50"):
    config = load_config(
        None,
        [
            f"model.backbone={backbone}",
            "optim.name=adamw",
            "method.proj_hidden_dim=2048",
            "data.image_size=64",
        ],
    )
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = build_optimizer(model, config.optim, 256)
    scheduler = build_scheduler(optimizer, config.optim, 100, 10)
    engine = Engine(device, "fp32", None)
    model = engine.setup(model, optimizer)
    views = [torch.randn(4, 3, 64, 64, device=device) for _ in range(2)]
    engine.backward(model(views).loss)  # one step: the optimizer holds its moments
    engine.step()
    return engine, model, optimizer, scheduler


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench(args) -> dict[str, float]:
    device = torch.device(args.device)
    engine, model, optimizer, scheduler = setup(device, args.backbone)
    root = Path(tempfile.mkdtemp(dir=args.dir))
    times: dict[str, list[float]] = {
        k: [] for k in ("dcp_save", "dcp_load", "torch_save", "torch_load")
    }
    sizes = {}
    try:
        for i in range(args.repeat):
            manager = CheckpointManager(
                root / f"dcp{i}", engine, scheduler, TrainState(step=1), Cadence(keep_last=1)
            )
            started = time.perf_counter()
            path = manager.save(1, force=True)
            assert path is not None
            times["dcp_save"].append(time.perf_counter() - started)
            sizes["dcp"] = folder_bytes(path)
            started = time.perf_counter()
            manager.load(path)
            times["dcp_load"].append(time.perf_counter() - started)

            file = root / f"plain{i}.pt"
            started = time.perf_counter()
            with file.open("wb") as fh:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            times["torch_save"].append(time.perf_counter() - started)
            sizes["torch"] = file.stat().st_size
            started = time.perf_counter()
            state = torch.load(file, map_location=device, weights_only=True)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            times["torch_load"].append(time.perf_counter() - started)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {k: statistics.median(v) for k, v in times.items()}
    result["dcp_mib"] = sizes["dcp"] / 2**20
    result["torch_mib"] = sizes["torch"] / 2**20
    return result


def stall(args, backbone: str) -> dict[str, float]:
    """Seconds ``save()`` keeps training waiting: a synchronous write against a background one
    (the copy into CPU memory; the write itself overlaps the next steps)."""
    device = torch.device(args.device)
    engine, _, _, scheduler = setup(device, backbone)
    root = Path(tempfile.mkdtemp(dir=args.dir))
    times: dict[str, list[float]] = {"sync": [], "async": []}
    try:
        for i in range(args.repeat):
            for kind, writer in (("sync", None), ("async", BackgroundWriter(device))):
                manager = CheckpointManager(
                    root / f"{kind}{i}", engine, scheduler, TrainState(step=1),
                    Cadence(keep_last=1), writer=writer,
                )  # fmt: skip
                started = time.perf_counter()
                manager.save(1, force=True)
                times[kind].append(time.perf_counter() - started)
                manager.wait()  # not a stall: training would run meanwhile
                manager.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {k: statistics.median(v) for k, v in times.items()}


def print_stalls(args, device: str) -> None:
    print(f"\ntraining stall per checkpoint, {device}, median of {args.repeat}")
    rows = []
    for backbone in args.stall_backbones.split(","):
        r = stall(args, backbone)
        rows.append([backbone, f"{r['sync']:.2f} s", f"{r['async']:.2f} s",
                     f"{r['async'] / r['sync']:.3f}x"])  # fmt: skip
    header = ["model state", "synchronous save", "checkpoint.async_save", "ratio"]
    print(*markdown_table(header, rows), sep="\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backbone", default="resnet50", help="resnet18: a quick check")
    parser.add_argument("--dir", default=None, help="where to write (default: the temp dir)")
    parser.add_argument(
        "--stall-backbones", default="resnet50,vit_base",
        help="models whose training stall per checkpoint is measured ('' skips it)",
    )  # fmt: skip
    args = parser.parse_args()
    r = bench(args)
    device = (
        torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    )
    print(f"{args.backbone} SimCLR + AdamW state, {device}, median of {args.repeat}")
    rows = [
        [name, f"{ours:.2f} {unit}", f"{plain:.2f} {unit}", f"{ours / plain:.2f}x"]
        for name, ours, plain, unit in (
            ("save", r["dcp_save"], r["torch_save"], "s"),
            ("load", r["dcp_load"], r["torch_load"], "s"),
            ("size", r["dcp_mib"], r["torch_mib"], "MiB"),
        )
    ]
    header = ["operation", "selfsup (DCP, atomic)", "torch.save/load", "ratio"]
    print(*markdown_table(header, rows), sep="\n")
    if args.stall_backbones:
        print_stalls(args, device)


if __name__ == "__main__":
    main()
