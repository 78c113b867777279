"""Where a submitted run stands, from its run directory and SLURM's accounting.

``selfsup status RUN`` answers what a user of a preempted or requeued job
asks first: which job, in which state, how often SLURM restarted it, the
newest complete checkpoint (what a restart resumes from) and the last logged
training rate. The job id comes from the files submitit writes into the run
directory (``<job id>_submission.sh``); its history (one row per start) from
``sacct --duplicates``. A run trained outside SLURM shows its checkpoint and rate.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from selfsup.errors import ConfigError
from selfsup.pipelines.checkpoint.folders import find_latest, read_meta
from selfsup.pipelines.checkpoint.run_dir import CHECKPOINT_DIR, RUN_MARKER, TB_DIR, find_run_dir
from selfsup.pipelines.train.monitor import read_scalars

_SUBMISSION = re.compile(r"^(\d+)_submission\.sh$")
RATE_TAG = "train/img_per_s"


@dataclass(frozen=True)
class JobStart:
    """One start of a SLURM job, as ``sacct --duplicates`` lists it."""

    state: str  # RUNNING, PREEMPTED, REQUEUED, NODE_FAIL, TIMEOUT, COMPLETED, ...
    start: str
    end: str
    nodes: str


@dataclass
class RunStatus:
    run_dir: Path
    job_id: str | None = None
    starts: list[JobStart] = field(default_factory=list)
    accounting: str | None = None  # why SLURM's history is missing, when it is
    checkpoint: Path | None = None
    checkpoint_step: int | None = None
    total_steps: int | None = None
    rate: tuple[int, float] | None = None  # (step, images/s)

    @property
    def restarts(self) -> int:
        return max(0, len(self.starts) - 1)

    def lines(self) -> list[str]:
        rows = [("run", str(self.run_dir)), ("job", self._job()), ("restarts", self._restarts())]
        rows += [("checkpoint", self._checkpoint()), ("rate", self._rate())]
        return [f"{name:<11} {value}" for name, value in rows]

    def _job(self) -> str:
        if self.job_id is None:
            return "none (not submitted to SLURM)"
        if not self.starts:
            why = self.accounting or "sacct has no record of it yet"
            return f"{self.job_id}, state unknown ({why})"
        now = self.starts[-1]
        return f"{self.job_id}: {now.state} on {now.nodes} (started {now.start})"

    def _restarts(self) -> str:
        if not self.starts:
            return "unknown" if self.job_id else "0"
        ends = ", ".join(f"{s.state} at {s.end}" for s in self.starts[:-1])
        return f"{self.restarts} ({ends})" if ends else "0"

    def _checkpoint(self) -> str:
        if self.checkpoint is None:
            return "none yet"
        of = f" of {self.total_steps}" if self.total_steps else ""
        return f"step {self.checkpoint_step}{of} ({self.checkpoint})"

    def _rate(self) -> str:
        if self.rate is None:
            return "none logged yet"
        return f"{self.rate[1]:,.1f} img/s at step {self.rate[0]}"


def job_id_of(run_dir: Path) -> str | None:
    """The newest SLURM job that ran in ``run_dir`` (a resubmission has a larger id)."""
    ids = [int(m.group(1)) for p in run_dir.iterdir() if (m := _SUBMISSION.match(p.name))]
    return str(max(ids)) if ids else None


def job_starts(job_id: str) -> list[JobStart]:
    """Every start of the job, oldest first (``sacct --duplicates``: requeues included)."""
    fields = "State,Start,End,NodeList"
    done = subprocess.run(
        ["sacct", "--duplicates", "--allocations", "--noheader", "--parsable2",
         f"--jobs={job_id}", f"--format={fields}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if done.returncode != 0:
        raise OSError(done.stderr.strip() or f"sacct exited with {done.returncode}")
    rows = [line.split("|") for line in done.stdout.splitlines() if line.count("|") == 3]
    return [JobStart(state.split()[0], start, end, nodes) for state, start, end, nodes in rows]


def run_status(path: Path) -> RunStatus:
    run_dir = find_run_dir(path)
    if run_dir is None:
        raise ConfigError(f"{path} is not a selfsup run directory (it has no {RUN_MARKER})")
    status = RunStatus(run_dir=run_dir, job_id=job_id_of(run_dir))
    if status.job_id is not None:
        try:
            status.starts = job_starts(status.job_id)
        except (OSError, subprocess.TimeoutExpired) as exc:
            status.accounting = f"sacct: {str(exc).splitlines()[0] if str(exc) else exc}"
    latest = find_latest(run_dir / CHECKPOINT_DIR)
    if latest is not None:
        meta = read_meta(latest)
        status.checkpoint, status.checkpoint_step = latest, int(meta["step"])
        status.total_steps = meta.get("total_steps")
    rates = read_scalars(run_dir / TB_DIR, RATE_TAG)
    status.rate = rates[-1] if rates else None
    return status
