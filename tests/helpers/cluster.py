"""The local test cluster of slurm/dev-cluster.sh, as the tests see it."""

from __future__ import annotations

import subprocess

DEV_CLUSTER = "selfsup-dev"  # slurm/dev-cluster.sh; tests never submit to any other cluster


def slurm_nodes_up() -> int:
    """How many nodes of the local test cluster are ready to run jobs (0: not ours, or down)."""
    try:
        config = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=20
        )
        nodes = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0
    settings = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition("=") for line in config.stdout.splitlines())
    )
    if settings.get("ClusterName") != DEV_CLUSTER:
        return 0
    ready = {
        line.split()[0]
        for line in nodes.stdout.splitlines()
        if line.split()[-1:] and line.split()[-1] in ("idle", "mixed", "allocated")
    }
    return len(ready)
