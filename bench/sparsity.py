"""2:4 sparse against dense: matmuls of ViT-B/16 and ResNet-50, and a whole ViT-B/16 forward.

On a CUDA GPU of compute capability 8.0 or later (A100, H100, H200), bf16:

- ``vitb16 fc1`` / ``vitb16 fc2``: the MLP layers of ViT-B/16 (768 -> 3072 ->
  768) over a batch of 256 images' 197 tokens;
- ``r50 1x1 <in>-><out>``: ResNet-50's 1x1 convolutions as the matmuls they
  are (``(B*H*W, in) @ (in, out)`` at 224 px, batch 256);
- ``vitb16 forward``: timm's ViT-B/16 at batch 256, every block's linear
  layers 2:4-pruned and swapped for ``to_sparse_semi_structured`` weights.

Dense is ``F.linear`` on the plain weight; 2:4 is ``F.linear`` on the
weight turned into ``torch.sparse``'s semi-structured format (cuSPARSELt where
built in, else CUTLASS), both after the mask of :mod:`selfsup.ssl.sparsity`
(so the same zeros). Inference (no autograd), as ``torch.sparse`` documents
the speed-up. The ratio is dense time / 2:4 time (above 1: 2:4 is faster).

On a CPU the 2:4 kernels do not exist: the script says so in one line and
times the training-time path instead, the masked-dense linear (``weight =
mask * original`` each call, the parametrization sparse training uses)
against the plain dense one, on the same layer shapes with fewer tokens.

    python bench/sparsity.py                 # GPU when present
    python bench/sparsity.py --smoke         # tiny sizes: checks the script runs
    python bench/sparsity.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from benchlib import sync
from torch import nn

from selfsup.ssl.sparsity import magnitude_mask
from selfsup.text import markdown_table

# (name, tokens per image or pixels per image at the layer, in, out)
VIT_MLP = [("vitb16 fc1", 197, 768, 3072), ("vitb16 fc2", 197, 3072, 768)]
R50_1X1 = [  # stage: (H*W at 224 px, in, out) of the bottleneck's 1x1 convolutions
    ("r50 1x1 256->64", 56 * 56, 256, 64), ("r50 1x1 64->256", 56 * 56, 64, 256),
    ("r50 1x1 512->128", 28 * 28, 512, 128), ("r50 1x1 128->512", 28 * 28, 128, 512),
    ("r50 1x1 1024->256", 14 * 14, 1024, 256), ("r50 1x1 256->1024", 14 * 14, 256, 1024),
    ("r50 1x1 2048->512", 7 * 7, 2048, 512), ("r50 1x1 512->2048", 7 * 7, 512, 2048),
]  # fmt: skip
CPU_LINE = (
    "2:4 kernels (torch.sparse semi-structured: cuSPARSELt/CUTLASS) need a CUDA GPU of compute "
    "capability 8.0 or later; timing the masked-dense path of sparse training only"
)


def semi_structured_ok(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after 3 warm-up calls."""
    with torch.no_grad():
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def two_four(weight: torch.Tensor) -> torch.Tensor:
    keep = magnitude_mask(weight, torch.ones_like(weight, dtype=torch.bool), 1.0, "2:4", (1, 1))
    return weight * keep


def matmul_row(name: str, rows: int, cin: int, cout: int, device: torch.device, repeats: int):
    """Dense against 2:4 (GPU) or masked-dense (CPU) for one ``(rows, cin) @ (cin, cout)``."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.randn(rows, cin, device=device, dtype=dtype)
    weight = two_four(torch.randn(cout, cin, device=device, dtype=dtype))
    dense = median_seconds(lambda: F.linear(x, weight), device, repeats)
    if semi_structured_ok(device):
        from torch.sparse import to_sparse_semi_structured

        sparse_weight = to_sparse_semi_structured(weight)
        other = median_seconds(lambda: F.linear(x, sparse_weight), device, repeats)
    else:
        mask = weight != 0
        other = median_seconds(lambda: F.linear(x, weight * mask), device, repeats)
    return {"layer": name, "shape": f"({rows}, {cin}) @ ({cin}, {cout})",
            "dense_ms": 1e3 * dense, "other_ms": 1e3 * other, "ratio": dense / other}  # fmt: skip


def vit_forward_row(batch: int, device: torch.device, repeats: int) -> dict[str, object]:
    """A whole ViT-B/16 forward, dense against every block linear layer in 2:4 form."""
    import timm
    from torch.sparse import to_sparse_semi_structured

    model = timm.create_model("vit_base_patch16_224", num_classes=0).to(device).eval()
    model = model.to(torch.bfloat16)
    images = torch.randn(batch, 3, 224, 224, device=device, dtype=torch.bfloat16)
    dense = median_seconds(lambda: model(images), device, repeats)
    for block in model.blocks:
        for layer in block.modules():
            if isinstance(layer, nn.Linear):
                pruned = two_four(layer.weight.detach())
                layer.weight = nn.Parameter(to_sparse_semi_structured(pruned), requires_grad=False)
    sparse = median_seconds(lambda: model(images), device, repeats)
    return {"layer": "vitb16 forward", "shape": f"batch {batch}, 224 px",
            "dense_ms": 1e3 * dense, "other_ms": 1e3 * sparse, "ratio": dense / sparse}  # fmt: skip


def run(args: argparse.Namespace, device: torch.device) -> list[dict[str, object]]:
    batch = 2 if args.smoke else args.batch_size
    if not semi_structured_ok(device):
        batch = 2 if args.smoke else 8  # the CPU path: the same shapes, fewer images
    rows = [
        matmul_row(name, batch * per_image, cin, cout, device, args.repeats)
        for name, per_image, cin, cout in [*VIT_MLP, *R50_1X1]
    ]
    if semi_structured_ok(device):
        rows.append(vit_forward_row(batch, device, args.repeats))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script runs")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.smoke:
        args.repeats = 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = semi_structured_ok(device)
    if not gpu:
        print(CPU_LINE)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"machine: {machine or platform.machine()}, torch {torch.__version__}, "
          f"{'bf16' if gpu else 'fp32'}, {time.strftime('%Y-%m-%d')}")  # fmt: skip
    rows = run(args, device)
    other = "2:4 ms" if gpu else "masked-dense ms"
    table = [[r["layer"], r["shape"], f"{r['dense_ms']:.3f}", f"{r['other_ms']:.3f}",
              f"{r['ratio']:.2f}x"] for r in rows]  # fmt: skip
    header = ["layer", "matmul", "dense ms", other, f"dense / {other[:-3]}"]
    print(*markdown_table(header, table), sep="\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": gpu, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
