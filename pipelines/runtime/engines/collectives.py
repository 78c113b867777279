"""What every multi-process engine does the same way: barriers, reductions, leaving the group."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from selfsup.pipelines.runtime.distributed import (
    DistEnv,
    Peer,
    init_process_group,
    introduce,
    lost_peer_message,
)


class ProcessGroupCollectives:
    """Collectives over the default process group; mixed in before :class:`Engine`.

    ``backend`` is ``"nccl"`` (device tensors) or ``"gloo"`` (CPU tensors).
    """

    backend: str
    device: torch.device
    world_size: int
    env: DistEnv
    dist_timeout_s: float
    peers: list[Peer]

    def join_process_group(self) -> None:
        """Join the job's process group and learn where every rank runs."""
        self.backend = init_process_group(self.env, self.device, self.dist_timeout_s)
        self.peers = introduce(self.env, self._collective_device())

    def lost_peer(self, exc: BaseException) -> str | None:
        """One line naming the rank a failed collective lost (None: not such a failure)."""
        return lost_peer_message(exc, self.peers, self.env.rank)

    def barrier(self) -> None:
        dist.barrier()

    def reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        # NCCL reduces device tensors only; gloo takes CPU tensors.
        reduced = value.detach().to(self._collective_device(), torch.float64)
        dist.all_reduce(reduced)
        return (reduced / self.world_size).to(value.device, value.dtype)

    def any_rank(self, flag: bool) -> bool:
        value = torch.tensor([1 if flag else 0], device=self._collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        local = rows.detach().contiguous().to(self._collective_device())
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)  # every backend has it (gloo lacks the _into_tensor form)
        return torch.cat(parts).to(rows.device)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def _collective_device(self) -> torch.device | str:
        return self.device if self.backend == "nccl" else "cpu"


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) to every rank (collective)."""
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)
