"""DistributedDataParallel: one process per device, gradients all-reduced every step."""

from __future__ import annotations

import contextlib
from concurrent.futures import Future
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from selfsup.pipelines.checkpoint.background import BackgroundWriter
from selfsup.pipelines.runtime.engines.base import Engine
from selfsup.pipelines.runtime.engines.collectives import (
    ProcessGroupCollectives,
    broadcast_buffers,
)


class DDPEngine(ProcessGroupCollectives, Engine):
    """DDP over NCCL (GPUs) or gloo (CPUs); checkpoints through DCP, reshardable."""

    name = "ddp"

    def __init__(self, *args, sync_batchnorm: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sync_batchnorm = sync_batchnorm
        self.join_process_group()
        self.wrapped: DistributedDataParallel | None = None

    def setup(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, channels_last: bool = False
    ) -> nn.Module:
        if self.sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.place(model, optimizer, channels_last)
        self.wrapped = DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )
        return self.maybe_compile(self.wrapped)

    def save_model_and_optimizer(
        self, path: Path, writer: BackgroundWriter | None = None
    ) -> Future | None:
        # Buffers (BatchNorm statistics) drift apart between ranks within a step;
        # DDP copies rank 0's to all at the next forward. Do it now, so that the
        # checkpoint holds the buffers every rank will continue from, whichever
        # rank's copy DCP writes.
        broadcast_buffers(self.unwrap())
        return super().save_model_and_optimizer(path, writer)

    def sync_context(self, last: bool) -> contextlib.AbstractContextManager:
        assert self.wrapped is not None, "call setup() first"
        return contextlib.nullcontext() if last else self.wrapped.no_sync()
