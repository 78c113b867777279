"""Per-rank memory of parameters, gradients and optimizer state: FSDP against DDP.

A SimCLR model (ViT-B by default) with AdamW is built from a selfsup config
exactly as ``selfsup train`` builds it, set up by each engine on ``--ranks``
gloo processes (CPU) or NCCL (one GPU each), and one optimizer step taken.
Each rank then counts the bytes it holds: its parameters (FSDP: its shards),
its gradients after backward (before the step frees them), and its optimizer
state after the step. This is what sharding changes; activations and DDP's
gradient buckets (another copy of the gradients, not counted) come on top.
DDP is the plain-library baseline: torch's DistributedDataParallel with
every tensor whole on every rank.

    python bench/engine_memory.py                      # ViT-B, 2 ranks, CPU
    python bench/engine_memory.py --backbone vit_tiny  # a quick check
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
from typing import Any

import torch
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor

from selfsup.pipelines.config import load_config
from selfsup.pipelines.runtime.engines import build_engine
from selfsup.pipelines.train.build import build_model
from selfsup.pipelines.train.optim import build_optimizer
from selfsup.text import markdown_table

ENGINES = ("ddp", "fsdp")


def local_bytes(tensors: Any) -> int:
    """Bytes this rank holds of ``tensors`` (a DTensor's local shard)."""
    total = 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            t = t.to_local() if isinstance(t, DTensor) else t
            total += t.numel() * t.element_size()
    return total


def worker(rank: int, args: argparse.Namespace, port: int, results: Any) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(args.ranks), LOCAL_RANK=str(rank),
    )  # fmt: skip
    config = load_config(None, [
        f"model.backbone={args.backbone}", "model.patch_size=16", "data.image_size=64",
        "optim.name=adamw", f"train.engine={args.engine}", "train.precision=fp32",
        f"train.device={args.device}", "model.channels_last=false",
    ])  # fmt: skip
    engine = build_engine(config)
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = build_optimizer(model, config.optim, 256)
    model = engine.setup(model, optimizer)
    views = [torch.randn(2, 3, 64, 64, device=engine.device) for _ in range(2)]
    engine.backward(model(views).loss)
    grads = local_bytes(p.grad for p in model.parameters())
    engine.step()
    state = local_bytes(v for s in optimizer.state.values() for v in s.values())
    results[rank] = (local_bytes(model.parameters()), grads, state)
    engine.close()


def measure(args: argparse.Namespace, engine: str) -> tuple[int, int, int]:
    """The largest rank's (parameters, gradients, optimizer state) in bytes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(worker, (argparse.Namespace(**vars(args), engine=engine), port, results), args.ranks)
    return max(results.values(), key=sum)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="vit_base")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (one GPU per rank)")
    args = parser.parse_args()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    found = {engine: measure(args, engine) for engine in ENGINES}
    where = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor()
    print(f"{args.backbone} SimCLR + AdamW, {args.ranks} ranks, {where or 'cpu'}: bytes per rank")
    ddp = found["ddp"]
    rows = [
        [
            engine,
            *(f"{b / 2**20:.1f} MiB" for b in (*parts, sum(parts))),
            f"{sum(parts) / sum(ddp):.3f}x",
        ]
        for engine, parts in found.items()
    ]
    header = ["engine", "parameters", "gradients", "optimizer state", "total", "vs ddp"]
    print(*markdown_table(header, rows), sep="\n")


if __name__ == "__main__":
    main()
