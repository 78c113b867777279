"""Every process's random number generator states, saved and restored with each checkpoint.

Files hold tensors, ints and floats only, so they load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (tensors, ints and floats only: weights-only loadable)."""
    version, state, gauss = random.getstate()
    rng: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        "python": [version, list(state), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["torch_cuda"] = torch.cuda.get_rng_state()
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch_cpu"])
    if "torch_cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["torch_cuda"])
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))


def rng_file(path: Path, rank: int) -> Path:
    return path / f"rng_rank{rank}.pt"
