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

The process group uses NCCL on GPUs and gloo on CPUs, with a timeout on every
collective (``train.dist_timeout_s``): a rank whose peer died leaves within it
instead of waiting for the job's time limit. At the start the ranks exchange
their host names and addresses (:func:`introduce`), so that a lost peer can be
named (:func:`lost_peer_message`).
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from selfsup.errors import ConfigError
from selfsup.logs import EVERY_RANK

log = logging.getLogger(__name__)


# torch's own default for gloo: long enough for a slow checkpoint write at scale,
# where the other ranks wait in a collective for the slowest writer.
DEFAULT_TIMEOUT_S = 1800.0
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
    return DistEnv(master_port=_lone_port(env))


def _lone_port(env: Mapping[str, str]) -> int:
    """A process alone in its group (one-process DeepSpeed) rendezvouses with itself:
    ``MASTER_PORT`` when set, else any free loopback port, so two such runs on one
    machine (or a relaunch while the old socket lingers) never meet on 29500."""
    if env.get("MASTER_PORT"):
        return int(env["MASTER_PORT"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


def init_process_group(
    env: DistEnv, device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S
) -> str:
    """Join the job's process group (once); returns the backend used.

    ``timeout_s`` bounds every collective (and the rendezvous): a peer that died
    without closing its sockets (a lost node) is noticed within it.
    """
    backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_initialized():
        return dist.get_backend()
    # DeepSpeed and torch's env:// rendezvous read these. NCCL's watchdog turns a
    # collective that outlives the timeout into an error (rather than a hang).
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
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
    dist.init_process_group(
        backend, rank=env.rank, world_size=env.world_size, timeout=timedelta(seconds=timeout_s)
    )
    log.debug(
        "rank %d/%d joined %s at %s:%d",
        env.rank,
        env.world_size,
        backend,
        env.master_addr,
        env.master_port,
    )
    return backend


@dataclass(frozen=True)
class Peer:
    """A rank of the job and where it runs."""

    rank: int
    host: str
    address: str  # the address it reaches the rendezvous from

    def __str__(self) -> str:
        return f"rank {self.rank} on {self.host} ({self.address})"


PEER_BYTES = 256  # a host name and an address, UTF-8, padded


def local_address(master_addr: str, master_port: int) -> str:
    """The address this host reaches the rendezvous from (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((master_addr, master_port))
            return str(probe.getsockname()[0])
        except OSError:
            return "unknown address"


def introduce(env: DistEnv, device: torch.device | str = "cpu") -> list[Peer]:
    """Every rank's host and address, known to all (one all-gather of bytes, no pickle)."""
    me = f"{socket.gethostname()} {local_address(env.master_addr, env.master_port)}"
    mine = torch.zeros(PEER_BYTES, dtype=torch.uint8, device=device)
    encoded = me.encode()[:PEER_BYTES]
    mine[: len(encoded)] = torch.tensor(list(encoded), dtype=torch.uint8)
    table = [torch.empty_like(mine) for _ in range(env.world_size)]
    dist.all_gather(table, mine)
    peers = []
    for rank, row in enumerate(table):
        host, _, address = bytes(row.cpu().tolist()).rstrip(b"\0").decode().partition(" ")
        peers.append(Peer(rank, host, address))
    log.info(
        "%s of %d (local rank %d), rendezvous at %s:%d",
        peers[env.rank],
        env.world_size,
        env.local_rank,
        env.master_addr,
        env.master_port,
        extra=EVERY_RANK,
    )
    return peers


_ADDRESS = re.compile(r"\[?(\d{1,3}(?:\.\d{1,3}){3})\]?:\d+")


# What gloo's transport raises, as a plain RuntimeError, when a peer is gone or silent.
_GLOO_FAILURES = (
    "Connection closed by peer",
    "Connection reset",
    "Timed out waiting",
    "Read error",
)


def is_communication_failure(exc: BaseException) -> bool:
    """A collective failed: a peer closed its connection, or did not answer in time."""
    return isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError) and any(word in str(exc) for word in _GLOO_FAILURES)
    )


def lost_peer_message(exc: BaseException, peers: Sequence[Peer], me: int) -> str | None:
    """One line naming the peer(s) a failed collective lost, or None for another failure.

    The peer is the one whose address the error names (gloo names the closed
    connection's remote end); else, with one other rank, that rank; else the
    message says only that a peer stopped answering.
    """
    if not is_communication_failure(exc):
        return None
    others = [p for p in peers if p.rank != me]
    named = set(_ADDRESS.findall(str(exc)))
    lost = [p for p in others if p.address in named] or (others if len(others) == 1 else [])
    who = " or ".join(str(p) for p in lost) if lost else "a peer rank"
    return (
        f"lost {who}: a collective failed on rank {me} ({_first_sentence(exc)}); the newest "
        "complete checkpoint is kept: requeue or rerun the job to resume from it"
    )


def _first_sentence(exc: BaseException) -> str:
    """gloo's and NCCL's message without their source location: ``Read error [addr]: ...``."""
    lines = str(exc).strip().splitlines()
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", lines[0]) if lines else ""
    return (text.split(". ")[0] or type(exc).__name__)[:160]
