"""What every SLURM test shares: no job outlives the test that submitted it."""

from __future__ import annotations

import subprocess

import pytest


@pytest.fixture(autouse=True)
def cancel_leftover_jobs(request, tmp_path):
    """A failed or interrupted test must not leave jobs holding the cluster's cores."""
    yield
    if "slurm" not in request.keywords:
        return
    listing = subprocess.run(
        ["squeue", "-h", "--Format=JobID:20,STDOUT:500"], capture_output=True, text=True
    )
    ours = [
        line.split()[0]
        for line in listing.stdout.splitlines()
        if len(line.split()) == 2 and line.split()[1].startswith(str(tmp_path))
    ]
    if ours:
        subprocess.run(["scancel", *ours], check=False, timeout=60)
