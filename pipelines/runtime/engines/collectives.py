"""What every multi-process engine does the same way: barriers, reductions, leaving the group."""

from __future__ import annotations

import torch
import torch.distributed as dist


class ProcessGroupCollectives:
    """Collectives over the default process group; mixed in before :class:`Engine`.

    ``backend`` is ``"nccl"`` (device tensors) or ``"gloo"`` (CPU tensors).
    """

    backend: str
    device: torch.device
    world_size: int

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

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def _collective_device(self) -> torch.device | str:
        return self.device if self.backend == "nccl" else "cpu"
