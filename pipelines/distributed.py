"""Where this process sits in a job, read from the environment in one place.

Three launchers are recognised, in this order:

- **torchrun** (or any launcher that sets ``RANK``/``WORLD_SIZE``/
  ``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``);
- **SLURM** tasks started by ``srun`` (``SLURM_PROCID``, ``SLURM_LOCALID``,
  ``SLURM_NTASKS``; the first host of the node list is the rendezvous
  address and the port is derived from the job id, so every task of a job
  agrees without talking first);
- otherwise a **single** process.

The process group uses NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from selfsup.errors import ConfigError

log = logging.getLogger(__name__)

PORT_BASE = 20000  # SLURM: MASTER_PORT = PORT_BASE + job_id % PORT_SPAN
PORT_SPAN = 20000


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "single"  # single | torchrun | slurm

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand SLURM's compressed host list: ``gpu[01-03,07],cpu5`` -> 4 + 1 names."""
    hosts: list[str] = []
    for match in re.finditer(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist):
        prefix, ranges = match.group(1), match.group(2)
        if ranges is None:
            hosts.append(prefix)
            continue
        for part in ranges.split(","):
            low, _, high = part.partition("-")
            if not high:
                hosts.append(prefix + low)
                continue
            width = len(low)
            hosts.extend(f"{prefix}{i:0{width}d}" for i in range(int(low), int(high) + 1))
    return hosts


def _tasks_per_node(value: str) -> int:
    """First count of ``SLURM_TASKS_PER_NODE`` (``"2(x3),1"`` -> 2)."""
    return int(re.match(r"\d+", value).group(0)) if value and re.match(r"\d+", value) else 1  # type: ignore[union-attr]


def detect_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """The launcher's view of this process (see the module docstring)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            world_size=int(env["WORLD_SIZE"]),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            launcher="torchrun",
        )
    # An srun step (SLURM_STEP_ID) with several tasks; the batch script itself is one process.
    ntasks = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")) or 1)
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env and ntasks > 1:
        nodes = expand_nodelist(env.get("SLURM_STEP_NODELIST", env.get("SLURM_JOB_NODELIST", "")))
        job_id = int(env.get("SLURM_JOB_ID", "0"))
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            world_size=ntasks,
            local_world_size=_tasks_per_node(
                env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", ""))
            ),
            master_addr=nodes[0] if nodes else "127.0.0.1",
            master_port=PORT_BASE + job_id % PORT_SPAN,
            launcher="slurm",
        )
    return DistEnv()


def device_for(env: DistEnv, requested: str = "auto") -> torch.device:
    """This process's device: its local GPU when there are GPUs, else the CPU."""
    use_cuda = torch.cuda.is_available() if requested == "auto" else requested == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no GPU is visible; use train.device=cpu or auto")
    if not use_cuda:
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if env.local_rank >= count:
        raise ConfigError(
            f"local rank {env.local_rank} has no GPU (this node has {count}); launch at most "
            f"{count} processes per node"
        )
    return torch.device("cuda", env.local_rank)


def init_process_group(env: DistEnv, device: torch.device) -> str:
    """Join the job's process group (once); returns the backend used."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_initialized():
        return dist.get_backend()
    # DeepSpeed and torch's env:// rendezvous read these.
    os.environ.update(
        {
            "RANK": str(env.rank),
            "LOCAL_RANK": str(env.local_rank),
            "WORLD_SIZE": str(env.world_size),
            "LOCAL_WORLD_SIZE": str(env.local_world_size),
            "MASTER_ADDR": env.master_addr,
            "MASTER_PORT": str(env.master_port),
        }
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)
    log.debug(
        "rank %d/%d joined %s at %s:%d",
        env.rank,
        env.world_size,
        backend,
        env.master_addr,
        env.master_port,
    )
    return backend
