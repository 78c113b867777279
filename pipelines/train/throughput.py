"""Model FLOPs per step and FLOPs utilisation (MFU).

The FLOPs of one training micro-batch (forward and backward) are counted
once, with ``torch.utils.flop_counter.FlopCounterMode`` on a copy of the
built model on the ``meta`` device: shapes only, no memory, no compute.
Dividing the achieved FLOP rate by the device's peak gives MFU; the peaks are
dense bf16 tensor-core rates from the vendors' datasheets. On a device not in
the table (CPUs among them) only the achieved FLOP rate is reported.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)

# Dense bf16 peak, TFLOP/s, by a substring of torch.cuda.get_device_name().
# First match wins, so specific names come before general ones.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
)


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s, when known."""
    if device.type != "cuda":
        return None
    return peak_flops_of(torch.cuda.get_device_name(device))


def peak_flops_of(name: str) -> float | None:
    """Dense bf16 peak in FLOP/s of the GPU named ``name`` (CUDA's name), when known."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12
    return None


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose every tensor is on the meta device; no byte is copied.

    The tensors are the ones the module's own ``_apply`` visits (what ``.to()``
    moves: parameters, buffers, and what a module holds outside its children,
    such as a distillation's unregistered teacher).
    """
    memo: dict[int, object] = {}

    def remember(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in memo:
            empty = torch.empty_like(tensor, device="meta")
            is_param = isinstance(tensor, nn.Parameter)
            memo[id(tensor)] = nn.Parameter(empty, tensor.requires_grad) if is_param else empty
        return tensor  # unchanged: _apply puts each tensor back where it was

    with torch.no_grad():
        model._apply(remember)
    return copy.deepcopy(model, memo)


def count_step_flops(model: nn.Module, inputs: Callable[[torch.device], Any]) -> float | None:
    """FLOPs of one forward and backward pass of ``model`` on ``inputs``, counted on meta tensors.

    ``model`` is not run nor changed: a meta copy of it is (:func:`meta_copy`).
    ``inputs(device)`` makes one micro-batch (the model's argument). None when counting fails.
    """
    # Losses select entries with nonzero(), whose output size meta tensors cannot
    # know; assuming "all nonzero" only changes shapes inside the (cheap) loss.
    from torch.fx.experimental import _config as fx_config

    try:
        copied = meta_copy(model)
        views = inputs(torch.device("meta"))
        counter = FlopCounterMode(display=False)
        # fx_config.patch is generated at import (torch's config module), unseen by mypy.
        assume_nonzero = fx_config.patch(meta_nonzero_assume_all_nonzero=True)  # type: ignore[attr-defined]
        with counter, assume_nonzero, torch.random.fork_rng(devices=[]):
            output = copied(views)
            output.loss.backward()
        return float(counter.get_total_flops())
    except Exception as exc:  # an op without a meta kernel, for example
        log.warning("cannot count the FLOPs of a training step (%s); MFU will not be shown", exc)
        return None


class Throughput:
    """Achieved FLOP/s and MFU from per-step FLOPs and measured step rates."""

    def __init__(
        self, flops_per_step: float | None, device: torch.device, peak_tflops: float | None = None
    ) -> None:
        self.flops_per_step = flops_per_step
        self.peak = peak_tflops * 1e12 if peak_tflops else peak_flops(device)

    def achieved(self, steps_per_second: float) -> float | None:
        """FLOP/s of this process."""
        return None if self.flops_per_step is None else self.flops_per_step * steps_per_second

    def mfu(self, steps_per_second: float) -> float | None:
        achieved = self.achieved(steps_per_second)
        return None if achieved is None or self.peak is None else achieved / self.peak
