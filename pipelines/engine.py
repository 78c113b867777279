"""Training engines: where the model lives, how a step is taken, how numbers are reduced.

The trainer talks to an engine only through :class:`Engine`'s methods, so the
same loop runs single-process, under DDP or under DeepSpeed. This module
holds the single-process engine (CPU or one GPU) and the precision policy
shared by all of them: bf16 autocast on CPU and GPU, fp16 autocast with a
``GradScaler`` on GPU only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from selfsup.errors import ConfigError, unknown_name

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no GPU is visible; use train.device=cpu or auto")
    return torch.device(name)


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            "train.precision=fp16 needs a GPU (CPU autocast supports bf16); "
            "use train.precision=bf16 or fp32"
        )


class Engine:
    """Single process on one device: the base every engine specialises."""

    name = "single"

    def __init__(self, device: torch.device, precision: str, clip_grad_norm: float | None) -> None:
        check_precision(precision, device)
        self.device = device
        self.precision = precision
        self.clip_grad_norm = clip_grad_norm
        self.dtype = PRECISIONS[precision]
        # Loss scaling only matters for fp16; bf16 has fp32's exponent range.
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    # -- process topology -------------------------------------------------
    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (a no-op here)."""

    def reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of ``value`` over processes (itself here)."""
        return value

    # -- model and step ---------------------------------------------------
    def setup(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, channels_last: bool = False
    ) -> nn.Module:
        """Move the model to the device; returns the module to call in the loop."""
        model.to(self.device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = optimizer
        return model

    def unwrap(self) -> nn.Module:
        """The plain model (without any distributed wrapper)."""
        assert self.model is not None, "call setup() first"
        return self.model

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
            return
        with torch.autocast(self.device.type, dtype=self.dtype):
            yield

    def backward_and_step(self, loss: torch.Tensor) -> torch.Tensor | None:
        """Back-propagate, clip, take the optimizer step; returns the gradient norm if clipped."""
        assert self.model is not None and self.optimizer is not None, "call setup() first"
        self.scaler.scale(loss).backward()
        grad_norm = None
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    # -- state ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Engine state a checkpoint must hold (the fp16 loss scale)."""
        return {"grad_scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        scaler_state = state.get("grad_scaler") or {}
        if scaler_state and self.scaler.is_enabled():
            self.scaler.load_state_dict(scaler_state)


def build_engine(name: str, device: torch.device, precision: str, clip: float | None) -> Engine:
    engines: dict[str, type[Engine]] = {"single": Engine}
    if name not in engines:
        raise unknown_name("engine", name, tuple(engines))
    return engines[name](device, precision, clip)
