"""How many data-loading workers a process gets when ``num_workers: auto``."""

from __future__ import annotations

import os

from selfsup.pipelines.config.schema import AUTO


def cpus_per_process() -> int:
    """CPUs this process may use (its affinity mask, as SLURM and containers set it), shared
    evenly among the processes of this node (torchrun's LOCAL_WORLD_SIZE)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 1
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, available // max(1, local_processes))


def loader_workers(setting: int | str) -> int:
    """``auto``: one worker per CPU of this process (torch warns above that); else as set."""
    return cpus_per_process() if setting == AUTO else int(setting)
