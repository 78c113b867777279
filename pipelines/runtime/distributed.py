"""Where this process sits in a job, read from the environment in one place.

Three launchers are recognised, in this order:

- **torchrun** (or any launcher that sets ``RANK``/``WORLD_SIZE``/
  ``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``);
- **SLURM** tasks started by ``srun``, read through submitit's
  ``SlurmJobEnvironment`` (``SLURM_PROCID``, ``SLURM_LOCALID``,
  ``SLURM_NTASKS``; the first host of the node list is the rendezvous
  address and the port is derived from the job id, so every task of a job
  agrees without talking first);
- otherwise a **single** process.

The process group uses NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import logging
import os
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
        return _slurm_env()
    return DistEnv()


def _slurm_env() -> DistEnv:
    """Rank, world and rendezvous of an srun task, as submitit reads SLURM's variables.

    submitit's ``SlurmJobEnvironment`` parses the node list and the task
    counts. Its ``TorchDistributedEnvironment`` would also pick the port, but
    it only works inside jobs submitit launched (it needs SUBMITIT_EXECUTOR),
    and ``srun selfsup train`` must work too; so the port is ``MASTER_PORT``
    when set, else derived from the job id, and every task of a job agrees on
    it without talking first.
    """
    from submitit.slurm.slurm import SlurmJobEnvironment  # only on SLURM

    slurm = SlurmJobEnvironment()
    job_id = int(slurm.raw_job_id)  # SLURM_JOB_ID: each array task has its own
    return DistEnv(
        rank=slurm.global_rank,
        local_rank=slurm.local_rank,
        world_size=slurm.num_tasks,
        local_world_size=max(1, slurm.num_tasks // max(1, slurm.num_nodes)),
        master_addr=slurm.hostnames[0],
        master_port=int(os.environ.get("MASTER_PORT") or PORT_BASE + job_id % PORT_SPAN),
        launcher="slurm",
    )


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """``auto`` picks the GPU when there is one; ``setting`` names the option in errors."""
    if name not in DEVICES:
        raise ConfigError(f"{setting} is '{name}'; valid devices: {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting} cuda, but no GPU is visible; use cpu or auto")
    return torch.device(name)


def device_for(env: DistEnv, requested: str = "auto") -> torch.device:
    """This process's device: its local GPU when there are GPUs, else the CPU."""
    if resolve_device(requested).type == "cpu":
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
