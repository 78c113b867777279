"""What runs inside a SLURM job: pretraining that checkpoints and requeues itself.

Launching is kept apart from training: a job calls the same ``train(config)``
as ``selfsup train`` does, in every task (one per GPU); the trainer reads its
rank and the rendezvous address from the SLURM environment.

Preemption and time limits: SLURM sends SIGUSR2 ``signal_delay_s`` before it
kills the job (``#SBATCH --signal=USR2@...``, or ``scancel --signal=USR2``).
During training every rank's trainer catches it, the ranks agree to stop at
the next step boundary, write a checkpoint together and leave; rank 0 then
asks SLURM to requeue the job (``scontrol requeue``, as submitit does) and
every task exits without recording a result, so the job's result is the one
of the final, requeued run. The requeued job resumes from the newest complete
checkpoint in its run directory, whatever its step number (there is no fixed
checkpoint file name to miss). SIGTERM (``scancel``, a
preemption by a higher-priority partition, or an outside ``scontrol
requeue``) also checkpoints before the kill, but is never answered with a
requeue: SLURM decides (and requeues a preempted job itself).

A lost rank (its process or node died): the surviving ranks' collectives fail
(at once when the peer's sockets closed, else after ``train.dist_timeout_s``),
each logs one line naming the lost rank and its host, asks SLURM to requeue
the job and exits; the requeued job resumes from the newest complete
checkpoint. A lost node is also noticed by SLURM itself (NODE_FAIL), which
requeues the job once the node is gone for ``SlurmdTimeout``.
``max_requeues`` bounds the requeues, counted by SLURM itself
(``SLURM_RESTART_COUNT``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import submitit

from selfsup.errors import LostPeerError, TrainingError
from selfsup.logs import log_to_stderr
from selfsup.pipelines.config import config_from_dict
from selfsup.pipelines.train.trainer import train
from selfsup.plugins import load_plugins

log = logging.getLogger(__name__)

PREEMPTION_SIGNAL = "SIGUSR2"
LOST_PEER = "lost peer"
REASONS = {PREEMPTION_SIGNAL: "preempted or timed out", LOST_PEER: "left by a lost rank"}


def restart_count() -> int:
    """How many times SLURM has requeued this job."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def requeue(job_id: str) -> None:
    # What submitit's SlurmJobEnvironment._requeue does; called directly because
    # the trainer, not submitit's signal handler, decides when it is safe. After a
    # lost peer every surviving rank asks: the first one wins, the others are told
    # the job is no longer running, which is not an error.
    done = subprocess.run(
        ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60
    )
    if done.returncode == 0:
        log.info("requeued job %s (restart %d)", job_id, restart_count() + 1)
    else:
        log.warning("scontrol requeue %s: %s", job_id, done.stderr.strip() or done.returncode)


class TrainJob(submitit.helpers.Checkpointable):
    """``train(config)`` as a submitit job whose folder is the run directory."""

    def __init__(self, config: dict[str, Any], max_requeues: int = 3) -> None:
        self.config = config
        self.max_requeues = max_requeues

    def __call__(self) -> dict[str, Any]:
        log_to_stderr(replace=False)
        load_plugins()  # the submitting process's SELFSUP_PLUGINS, inherited by the job
        job = submitit.JobEnvironment()
        run_dir = Path(self.config.get("run_dir") or job.paths.folder)
        # A requeued job waits for the run directory's lock: its previous instance may
        # still be writing, or have died on a lost node (stale once a lease has passed).
        checkpoint = {**self.config.get("checkpoint", {}), "wait_for_lock": True}
        values = {**self.config, "run_dir": str(run_dir), "checkpoint": checkpoint}
        config = config_from_dict(values, source="submitted job")
        if restart_count():
            log.info("job %s restarted by SLURM (%d time(s))", job.job_id, restart_count())
        try:
            result = train(config)
        except LostPeerError:  # already logged in one line, naming the peer
            self._leave(LOST_PEER, job)
            raise
        if result.stopped_by:
            self._leave(result.stopped_by, job)
        # Training is over: a preemption or time-limit warning from here on has nothing to
        # save, and must not kill the task before submitit records its result (the job
        # would end FAILED with its work done).
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        return {"run_dir": str(run_dir), "step": result.step, "final_loss": result.final_loss}

    def _leave(self, stopped_by: str, job: submitit.JobEnvironment) -> None:
        """After a stop: requeue on preemption (rank 0) or a lost peer (every survivor), then
        exit without a result."""
        asks = stopped_by == LOST_PEER or (job.global_rank == 0 and stopped_by == PREEMPTION_SIGNAL)
        if asks:
            if restart_count() >= self.max_requeues:
                raise TrainingError(
                    f"job {job.job_id} was {REASONS[stopped_by]} after {restart_count()} "
                    f"requeue(s); not requeued again (max_requeues={self.max_requeues}). Its last "
                    "checkpoint is in the run directory: submit again with run_dir=... to continue"
                )
            requeue(job.job_id)
        # SystemExit is not an Exception: submitit records no result for this run.
        sys.exit(-1)

    def checkpoint(  # type: ignore[override]  # None: no requeue, as submitit allows
        self, *args: Any, **kwargs: Any
    ) -> submitit.helpers.DelayedSubmission | None:
        """submitit's own USR2 handler calls this outside training: requeue within the bound."""
        if restart_count() >= self.max_requeues:
            return None  # submitit then reports the job as not requeued
        return super().checkpoint(*args, **kwargs)
