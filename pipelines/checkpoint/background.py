"""Checkpoint writes that run beside training: DCP's ``async_save``, one at a time.

``async_save`` copies the state into CPU memory (pinned on CUDA, so the copy
is a fast DMA) before it returns, then writes the copy from a thread while
training goes on. That thread coordinates the ranks with collectives of its
own, so it gets a process group of its own (gloo): sharing the training's
would interleave two streams of collectives in different orders on
different ranks. The checkpoint manager decides when a finished write is
committed; this module only starts writes and reports how they ended.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

from selfsup.pipelines.checkpoint.dcp_io import quiet_dcp


class BackgroundWriter:
    """Starts DCP writes of staged copies; owns their process group and staging memory."""

    def __init__(self, device: torch.device) -> None:
        # A collective: every rank builds its writer at the same point.
        self.group: dist.ProcessGroup | None = None
        if dist.is_initialized():
            group = dist.new_group(backend="gloo")
            assert isinstance(group, dist.ProcessGroup)  # every rank is a member
            self.group = group
        pinned = device.type == "cuda"
        # Synchronous staging: the copy is complete when start() returns, so the
        # training step after it may change every tensor.
        self.stager = DefaultStager(
            StagingOptions(
                use_pinned_memory=pinned,
                use_shared_memory=False,
                use_async_staging=False,
                use_non_blocking_copy=False,
            )
        )

    def start(self, state: dict[str, Any], path: Path) -> Future:
        """Copy ``state`` to CPU memory now; write it into folder ``path`` in the background."""
        with quiet_dcp():
            future = dcp.async_save(
                state, checkpoint_id=path, process_group=self.group, async_stager=self.stager
            )
        assert isinstance(future, Future)  # synchronous staging: one future, the write's
        return future

    def close(self) -> None:
        self.stager.close()
        if self.group is not None and dist.is_initialized():
            dist.destroy_process_group(self.group)
