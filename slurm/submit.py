"""Submitting selfsup work to SLURM through submitit, and following it to the end.

Pretraining: one job of ``nodes x tasks_per_node`` tasks (one per GPU) whose
submitit folder is the run directory, ``<output_dir>/<name>-<job id>``, so
logs, config, checkpoints and TensorBoard files sit together. Evaluation: a
job array (``executor.map_array``) of independent tasks.

Errors from SLURM come back as one :class:`SlurmError` line: a refused job
(unknown partition, bad account...) or a cluster that cannot be reached.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfsup.errors import SelfsupError
from selfsup.pipelines.config import RunConfig, to_dict
from selfsup.slurm.cluster import ClusterProfile
from selfsup.slurm.jobs import TrainJob

log = logging.getLogger(__name__)


class SlurmError(SelfsupError):
    """SLURM refused a job or could not be reached."""


def sbatch_parameters(profile: ClusterProfile, job_name: str) -> dict[str, Any]:
    """submitit ``SlurmExecutor`` parameters (sbatch's own names) for a profile."""
    exports = [f"export {key}={shlex.quote(str(value))}" for key, value in profile.env.items()]
    params: dict[str, Any] = {
        "job_name": job_name,
        "nodes": profile.nodes,
        "ntasks_per_node": profile.tasks,
        "cpus_per_task": profile.cpus_per_task,
        "time": profile.time_min,
        "signal_delay_s": profile.signal_delay_s,
        "setup": [*profile.setup, *exports],
        # Requeueable even where the cluster's default (JobRequeue) says otherwise.
        "additional_parameters": {"requeue": True, **profile.sbatch},
    }
    optional = {
        "partition": profile.partition,
        "account": profile.account,
        "qos": profile.qos,
        "constraint": profile.constraint,
        "exclude": profile.exclude,
        "gpus_per_node": profile.gpus_per_node or None,
        "mem": _memory(profile.mem_gb) if profile.mem_gb else None,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    return params


def _memory(gigabytes: float) -> str:
    return (
        f"{int(gigabytes)}GB" if float(gigabytes).is_integer() else f"{round(gigabytes * 1024)}MB"
    )


def submitit_command(folder: Path) -> str:
    """The command submitit's sbatch script runs in every task."""
    return " ".join(
        [shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))]
    )


def render_sbatch(folder: Path, params: dict[str, Any]) -> str:
    """The sbatch script submitit would write, without submitting (or needing SLURM)."""
    # submitit's own renderer (module-private, but it is exactly what
    # SlurmExecutor writes to disk), so --dry-run shows the real script.
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command=submitit_command(folder), folder=folder, **params)


def make_executor(folder: Path, params: dict[str, Any]):
    """A submitit ``SlurmExecutor``, or :class:`SlurmError` when SLURM's tools are missing."""
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise SlurmError(
            "SLURM is not reachable from here (no sbatch/srun on PATH); run on a login node, "
            "or start the local test cluster with slurm/dev-cluster.sh start"
        )
    import submitit

    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=10**6)
    executor.update_parameters(**params)
    return executor


def _slurm_error(exc: Exception) -> SlurmError:
    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = next((line for line in lines if "error:" in line), lines[-1] if lines else text)
    reason = reason.split("error:", 1)[-1].strip()
    if (
        "contact slurm controller" in text
        or "Unable to contact" in text
        or "connection refused" in text.lower()
    ):
        return SlurmError(f"SLURM is not reachable ({reason}); check `sinfo` and SLURM_CONF")
    if "partition" in text.lower():
        return SlurmError(f"SLURM refused the job: {reason}; `sinfo -s` lists the partitions")
    return SlurmError(f"SLURM refused the job: {reason}")


@dataclass
class Submission:
    job_id: str
    run_dir: Path
    stdout: Path
    stderr: Path
    job: Any  # submitit.Job

    def lines(self) -> list[str]:
        return [
            f"submitted job {self.job_id}",
            f"run directory: {self.run_dir}",
            f"logs: {self.stdout}",
            f"      {self.stderr}",
        ]


def training_folder(config: RunConfig) -> Path:
    """The run directory of a submitted run: explicit ``run_dir``, else keyed by job id."""
    if config.run_dir:
        return Path(config.run_dir)
    return Path(config.output_dir) / f"{config.name}-%j"


def submit_training(config: RunConfig, profile: ClusterProfile) -> Submission:
    folder = training_folder(config).absolute()
    executor = make_executor(folder, sbatch_parameters(profile, config.name))
    job_config = to_dict(config) | {"run_dir": str(folder) if config.run_dir else None}
    try:
        job = executor.submit(TrainJob(job_config, profile.max_requeues))
    except Exception as exc:  # submitit wraps sbatch's refusal in several types
        raise _slurm_error(exc) from exc
    return Submission(
        job_id=str(job.job_id),
        run_dir=job.paths.folder,
        stdout=job.paths.stdout,
        stderr=job.paths.stderr,
        job=job,
    )


def dry_run_training(config: RunConfig, profile: ClusterProfile) -> str:
    return render_sbatch(
        training_folder(config).absolute(), sbatch_parameters(profile, config.name)
    )


def submit_array(
    fn: Callable[..., Any],
    tasks: Sequence[Any],
    folder: Path,
    profile: ClusterProfile,
    job_name: str,
) -> list[Any]:
    """One SLURM job array running ``fn(task)`` for every task; returns submitit jobs."""
    executor = make_executor(folder.absolute(), sbatch_parameters(profile, job_name))
    try:
        return executor.map_array(fn, list(tasks))
    except Exception as exc:
        raise _slurm_error(exc) from exc


@dataclass
class Outcome:
    state: str  # COMPLETED | FAILED | CANCELLED | TIMEOUT | ...
    result: Any = None
    error: str | None = None  # the job's traceback or SLURM's reason

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED"


def wait_for(job: Any, poll_s: float = 2.0, timeout_s: float | None = None) -> Outcome:
    """Follow a job to its end, asking SLURM every ``poll_s`` (a cancelled job is noticed then)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    # A start that ended PREEMPTED or NODE_FAIL looks done to submitit, but SLURM has
    # requeued the job: it is over only once it left the queue.
    while not job.done(force_check=True) or still_queued(str(job.job_id)):
        if deadline is not None and time.monotonic() > deadline:
            return Outcome(state=f"still {job.state} after {timeout_s:.0f} s")
        time.sleep(poll_s)
    state = job.get_info(mode="force").get("State", job.state) or "UNKNOWN"
    first = (
        job._sub_jobs[0] if getattr(job, "_sub_jobs", None) else job
    )  # task 0 speaks for the job
    if first.paths.result_pickle.exists():
        try:
            return Outcome(state="COMPLETED", result=first.result())
        except Exception as exc:  # the job raised: its traceback is in the exception text
            return Outcome(state="FAILED", error=str(exc))
    if state.startswith("CANCELLED"):
        return Outcome(state="CANCELLED", error=state)
    tail = _log_tail(first.paths.stderr)
    return Outcome(state=state.split()[0] if state else "UNKNOWN", error=tail or state)


def still_queued(job_id: str) -> bool:
    """The job is pending, running or completing (squeue lists no job that has ended)."""
    try:
        listed = subprocess.run(
            ["squeue", "--noheader", f"--jobs={job_id}", "--format=%T"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False  # no answer: submitit's own view decides
    return listed.returncode == 0 and bool(listed.stdout.strip())


def wait_for_all(
    jobs: Sequence[Any], labels: Sequence[str], wait_min: float | None = None
) -> tuple[list[Any], list[str]]:
    """Results of the jobs that completed, and a line per job that did not.

    With ``wait_min`` the wait is bounded: a job still pending or running then
    is cancelled, so nothing keeps running unwatched, and reported as such.
    """
    results, failures = [], []
    deadline = None if wait_min is None else time.monotonic() + 60 * wait_min
    for label, job in zip(labels, jobs, strict=True):
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        outcome = wait_for(job, timeout_s=left)
        if outcome.ok:
            results.append(outcome.result)
            continue
        if not job.done():
            job.cancel(check=False)
        failures.append(f"{label}: {outcome.state}")
    return results, failures


def _log_tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
