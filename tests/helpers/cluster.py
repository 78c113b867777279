"""The local test cluster of slurm/dev-cluster.sh, as the tests see it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from helpers.runs import DEMO

from selfsup.pipelines.config import load_config
from selfsup.slurm.profiles import load_profile
from selfsup.slurm.submit import Submission, submit_training

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


TWO_NODES = ("node1", "node2")
RANK_LINE = re.compile(r"rank (\d+) on (\S+) \((\S+)\) of \d+")


def submit_two_node(options: list[str], **profile: Any) -> Submission:
    """``selfsup train`` with these overrides as a 2-node x 1-task job of the dev cluster."""
    config = load_config(DEMO, options)
    return submit_training(config, load_profile("dev2", profile))


def rank_lines(run_dir: Path, job_id: str, tasks: int = 2) -> dict[int, tuple[str, str]]:
    """Each rank's (host, address), from the line it logs on joining the process group."""
    found = {}
    for task in range(tasks):
        text = (run_dir / f"{job_id}_{task}_log.err").read_text()
        for rank, host, address in RANK_LINE.findall(text):
            found[int(rank)] = (host, address)
    return found


def hosts(job: Submission) -> set[str]:
    return {host for host, _ in rank_lines(job.run_dir, job.job_id).values()}
